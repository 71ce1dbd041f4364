#!/usr/bin/env python3
"""Writes tests/data/reference/diffusion_goldens.pt: small golden tensors computed by the
reference implementation (openai/guided-diffusion) for what the parity fixture does not cover:
every model mean type and variance type, rescaled timesteps, the four loss types, calc_bpd_loop,
ddim_reverse_sample, q_mean_variance, and the linear/cosine schedules at other lengths.

The "model" is a fixed smooth function of (x, t), so no network weights are needed. Noise is
recorded in the file so the C++ test can replay it.

Usage (Debian's Python with torch):
  /usr/bin/python3 scripts/make_diffusion_goldens.py --reference /path/to/guided-diffusion
"""
import argparse
import sys

import torch as th


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reference", required=True, help="a checkout of openai/guided-diffusion")
    parser.add_argument("--out", default="tests/data/reference/diffusion_goldens.pt")
    args = parser.parse_args()
    sys.path.insert(0, args.reference)
    from guided_diffusion import gaussian_diffusion as gd
    from guided_diffusion.respace import SpacedDiffusion, space_timesteps

    th.manual_seed(0)
    out = {}
    shape = (2, 3, 4, 4)
    x = th.randn(*shape)
    x_start = th.rand(*shape) * 2 - 1
    out["x"] = x
    out["x_start"] = x_start

    def model_fn(channels):
        def model(x_t, ts, **kwargs):
            tt = ts.float()[:, None, None, None] * 0.001
            a = th.sin(x_t * 1.3 + tt)
            if channels == 2:
                return th.cat([a, th.tanh(x_t * 0.7 - tt)], dim=1)
            return a
        return model

    mean_types = {"epsilon": gd.ModelMeanType.EPSILON, "start_x": gd.ModelMeanType.START_X,
                  "previous_x": gd.ModelMeanType.PREVIOUS_X}
    var_types = {"fixed_small": gd.ModelVarType.FIXED_SMALL, "fixed_large": gd.ModelVarType.FIXED_LARGE,
                 "learned": gd.ModelVarType.LEARNED, "learned_range": gd.ModelVarType.LEARNED_RANGE}
    loss_types = {"mse": gd.LossType.MSE, "rescaled_mse": gd.LossType.RESCALED_MSE,
                  "kl": gd.LossType.KL, "rescaled_kl": gd.LossType.RESCALED_KL}

    for steps, schedule in [(50, "linear"), (40, "cosine")]:
        out[f"betas_{schedule}_{steps}"] = th.from_numpy(gd.get_named_beta_schedule(schedule, steps))

    def make(schedule, steps, respacing, mean, var, loss, rescale):
        betas = gd.get_named_beta_schedule(schedule, steps)
        return SpacedDiffusion(use_timesteps=space_timesteps(steps, respacing or [steps]), betas=betas,
                               model_mean_type=mean, model_var_type=var, loss_type=loss,
                               rescale_timesteps=rescale)

    t = th.tensor([0, 7])
    for mname, mean in mean_types.items():
        for vname, var in var_types.items():
            for rescale in (False, True):
                d = make("linear", 100, "10", mean, var, gd.LossType.MSE, rescale)
                channels = 2 if vname.startswith("learned") else 1
                for clip in (True, False):
                    r = d.p_mean_variance(model_fn(channels), x, t, clip_denoised=clip)
                    key = f"pmv_{mname}_{vname}_{int(rescale)}_{int(clip)}"
                    for k in ("mean", "variance", "log_variance", "pred_xstart"):
                        out[f"{key}_{k}"] = r[k].expand(shape).contiguous()

    train_t = th.tensor([3, 61])
    train_noise = th.randn(*shape)
    out["train_t"] = train_t
    out["train_noise"] = train_noise
    for lname, loss in loss_types.items():
        for vname in ("fixed_large", "learned_range"):
            for mname in ("epsilon", "start_x"):
                d = make("cosine", 100, "", mean_types[mname], var_types[vname], loss, False)
                channels = 2 if vname.startswith("learned") else 1
                terms = d.training_losses(model_fn(channels), x_start, train_t, noise=train_noise)
                for k, v in terms.items():
                    out[f"loss_{lname}_{vname}_{mname}_{k}"] = v.detach()

    # calc_bpd_loop on a short process, recording the noise it draws.
    d = make("linear", 100, "", gd.ModelMeanType.EPSILON, gd.ModelVarType.LEARNED_RANGE,
             gd.LossType.MSE, False)
    noise_rows = th.randn(100, *shape)
    rows = iter(noise_rows)
    original = th.randn_like
    th.randn_like = lambda tensor, **kw: next(rows).clone()
    try:
        bpd = d.calc_bpd_loop(model_fn(2), x_start, clip_denoised=True)
    finally:
        th.randn_like = original
    out["bpd_noise"] = noise_rows
    for k, v in bpd.items():
        out[f"bpd_{k}"] = v

    # DDIM inversion and q(x_t | x_0).
    d = make("cosine", 100, "ddim10", gd.ModelMeanType.EPSILON, gd.ModelVarType.FIXED_LARGE,
             gd.LossType.MSE, False)
    rev = d.ddim_reverse_sample(model_fn(1), x, th.tensor([2, 5]), clip_denoised=False)
    out["ddim_reverse_sample"] = rev["sample"]
    out["ddim_reverse_pred_xstart"] = rev["pred_xstart"]
    mean, var, logvar = d.q_mean_variance(x_start, th.tensor([1, 9]))
    out["q_mean"], out["q_variance"], out["q_log_variance"] = mean, var.contiguous(), logvar.contiguous()

    th.save({k: v.contiguous() for k, v in out.items()}, args.out)
    print(f"wrote {len(out)} tensors to {args.out}")


if __name__ == "__main__":
    main()
