#!/usr/bin/python3
"""Times the reference implementation (openai/guided-diffusion) on classifier-guided DDIM, the
way its scripts/classifier_sample.py samples: the same networks, cond_fn and ddim_sample_loop.
Used by scripts/vs-reference.sh; runs on Debian's python3-torch. Prints one JSON line:
{"batch_s": ..., "sequential_s": ...}: one request of --batch images, then --batch requests of
one image run one after another (the reference serves one caller at a time).

Only guided_diffusion.script_util and what it imports are used (not dist_util, which needs
blobfile and MPI). REF_DIR is a checkout given by path; nothing of it is copied here.
"""
import argparse
import importlib
import json
import shlex
import sys
import time

import torch
import torch.nn.functional as F


def build(ref_dir, model_flags, classifier_flags, respacing):
    """The reference's networks and respaced diffusion from its flag strings, as its scripts do."""
    sys.path.insert(0, ref_dir)
    su = importlib.import_module("guided_diffusion.script_util")
    defaults = su.model_and_diffusion_defaults()
    defaults.update(su.classifier_defaults())
    parser = argparse.ArgumentParser()
    su.add_dict_to_argparser(parser, defaults)
    args = parser.parse_args(
        shlex.split(model_flags) + shlex.split(classifier_flags) + ["--timestep_respacing", respacing])
    model, diffusion = su.create_model_and_diffusion(
        **su.args_to_dict(args, su.model_and_diffusion_defaults().keys()))
    classifier = su.create_classifier(**su.args_to_dict(args, su.classifier_defaults().keys()))
    return args, model, diffusion, classifier, su.NUM_CLASSES


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ref_dir", required=True)
    p.add_argument("--model_path", required=True)
    p.add_argument("--classifier_path", required=True)
    p.add_argument("--model_flags", required=True)
    p.add_argument("--classifier_flags", required=True)
    p.add_argument("--timestep_respacing", default="ddim25")
    p.add_argument("--classifier_scale", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    opts = p.parse_args()

    args, model, diffusion, classifier, num_classes = build(
        opts.ref_dir, opts.model_flags, opts.classifier_flags, opts.timestep_respacing)

    torch.set_num_threads(opts.threads)
    model.load_state_dict(torch.load(opts.model_path, map_location="cpu"))
    classifier.load_state_dict(torch.load(opts.classifier_path, map_location="cpu"))
    model.eval()
    classifier.eval()

    def cond_fn(x, t, y=None):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = F.log_softmax(classifier(x_in, t), dim=-1)
            selected = log_probs[range(len(log_probs)), y.view(-1)]
            return torch.autograd.grad(selected.sum(), x_in)[0] * opts.classifier_scale

    def model_fn(x, t, y=None):
        return model(x, t, y if args.class_cond else None)

    shape = (3, args.image_size, args.image_size)  # the reference's sampling scripts: RGB

    def sample(n, seed):
        torch.manual_seed(seed)
        y = torch.arange(n) % num_classes
        start = time.perf_counter()
        diffusion.ddim_sample_loop(model_fn, (n,) + shape, clip_denoised=True,
                                   model_kwargs={"y": y}, cond_fn=cond_fn, device="cpu")
        return time.perf_counter() - start

    with torch.no_grad():  # warm-up: one forward of each network at both batch sizes
        for n in (1, opts.batch):
            x = torch.randn((n,) + shape)
            t = torch.zeros(n, dtype=torch.long)
            model_fn(x, t, torch.zeros(n, dtype=torch.long))
            classifier(x, t)
    batch_s = sample(opts.batch, 0)
    sequential_s = sum(sample(1, i) for i in range(opts.batch))
    print(json.dumps({"batch_s": batch_s, "sequential_s": sequential_s}))


if __name__ == "__main__":
    main()
