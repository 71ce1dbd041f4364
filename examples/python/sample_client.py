#!/usr/bin/python3
"""Example Python client of the guided-diffusion sampling service.

Lists the server's models, samples images of the given classes with one Sample call, then samples
them again with StreamSample, printing progress and saving PNG previews of the model's predicted
x_0 every few steps. Every image is written as a PNG under --out_dir.

The Python stubs are generated at run time from the repository's proto/ directory with
grpc_tools.protoc (Debian: python3-grpc-tools), into a temporary directory that is removed at
exit, so nothing generated is checked in or goes stale. Run it with Debian's Python:

    /usr/bin/python3 examples/python/sample_client.py --server localhost:50051 \\
        --labels 1,207,360 --classifier_scale 4 --out_dir samples
    /usr/bin/python3 examples/python/sample_client.py --labels 0,1,2 --classifier_scale 3 \\
        --sampler dpm++ --steps 15 --dynamic_thresholding_ratio 0.995
"""

import argparse
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

PROTO_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                          "proto"))
SAMPLER_PROTO = "guided_diffusion/v1/sampler.proto"
# The CLI's sampler names, as SamplerKind and SkipType enum value names.
SAMPLERS = {"ddpm": "SAMPLER_KIND_DDPM", "ddim": "SAMPLER_KIND_DDIM",
            "dpm++": "SAMPLER_KIND_DPM_SOLVER_PP"}
SKIP_TYPES = {"logSNR": "SKIP_TYPE_LOGSNR", "time_uniform": "SKIP_TYPE_TIME_UNIFORM",
              "time_quadratic": "SKIP_TYPE_TIME_QUADRATIC"}
# Results can be large (float32 [N, 3, 256, 256] is 786 KiB per image); gRPC's default limit on
# received messages is 4 MiB.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def load_stubs(stub_dir):
    """Generates sampler_pb2 / sampler_pb2_grpc into stub_dir and imports them.

    With grpc_tools.protoc (Debian: python3-grpc-tools), or else the system's protoc with gRPC's
    Python plugin (Debian: protobuf-compiler, protobuf-compiler-grpc).
    """
    common = [f"--proto_path={PROTO_DIR}", f"--python_out={stub_dir}",
              f"--grpc_python_out={stub_dir}", os.path.join(PROTO_DIR, SAMPLER_PROTO)]
    commands = [[sys.executable, "-m", "grpc_tools.protoc"] + common]
    protoc, plugin = shutil.which("protoc"), shutil.which("grpc_python_plugin")
    if protoc and plugin:
        commands.append([protoc, f"--plugin=protoc-gen-grpc_python={plugin}"] + common)
    errors = []
    for command in commands:
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode == 0:
            break
        errors.append(f"{' '.join(command[:3])}: {run.stderr.strip()}")
    else:
        sys.exit("cannot generate the Python stubs:\n" + "\n".join(errors))
    sys.path.insert(0, stub_dir)
    pb2 = importlib.import_module("guided_diffusion.v1.sampler_pb2")
    pb2_grpc = importlib.import_module("guided_diffusion.v1.sampler_pb2_grpc")
    return pb2, pb2_grpc


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="localhost:50051", help="HOST:PORT of the server")
    parser.add_argument("--labels", default="1,2,3",
                        help="comma-separated class labels, one image per label")
    parser.add_argument("--classifier_scale", type=float, default=0.0,
                        help="classifier guidance scale (0 = no guidance)")
    parser.add_argument("--out_dir", default="samples", help="where the PNGs are written")
    parser.add_argument("--model", default="", help="model name ('' = the server's default)")
    parser.add_argument("--sampler", choices=list(SAMPLERS), default="ddpm")
    parser.add_argument("--eta", type=float, default=0.0, help="ddim only: noise in [0, 1]")
    parser.add_argument("--timestep_respacing", default="",
                        help="ddpm and ddim: e.g. 250, ddim25 ('' = every step of the model)")
    parser.add_argument("--steps", type=int, default=0,
                        help="dpm++ only, required: model calls, e.g. 15")
    parser.add_argument("--solver_order", type=int, default=0, choices=[0, 1, 2, 3],
                        help="dpm++ only: 1, 2 or 3 (0 = the server's, 2)")
    parser.add_argument("--skip_type", choices=[""] + list(SKIP_TYPES), default="",
                        help="dpm++ only: the time grid ('' = logSNR)")
    parser.add_argument("--dynamic_thresholding_ratio", type=float, default=0.0,
                        help="any sampler: Imagen's dynamic thresholding ratio in (0, 1]; 0 = off")
    parser.add_argument("--every", type=int, default=10,
                        help="StreamSample: a pred_xstart preview every K steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--auth_token", default="", help="sent as 'authorization: Bearer ...'")
    parser.add_argument("--timeout_s", type=float, default=None, help="deadline of each call")
    args = parser.parse_args()
    try:
        args.labels = [int(label) for label in args.labels.split(",") if label]
    except ValueError:
        parser.error(f"--labels {args.labels!r} is not a comma-separated list of integers")
    if not args.labels:
        parser.error("--labels is empty")
    # The server checks these too; saying so here saves a round trip.
    if args.sampler == "dpm++" and args.steps < 1:
        parser.error("--sampler dpm++ needs --steps N (model calls, e.g. 15)")
    if args.sampler != "dpm++" and (args.steps or args.solver_order or args.skip_type):
        parser.error("--steps, --solver_order and --skip_type apply to --sampler dpm++ only")
    if args.sampler == "dpm++" and args.timestep_respacing:
        parser.error("--timestep_respacing does not apply to --sampler dpm++: use --steps")
    if args.eta and args.sampler != "ddim":
        parser.error("--eta needs --sampler ddim")
    return args


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def tensor_to_numpy(tensor, pb2):
    """A wire Tensor (shape, dtype, little-endian C-order bytes) as a numpy array."""
    import numpy as np  # only needed for this helper
    dtypes = {pb2.DTYPE_FLOAT32: "<f4", pb2.DTYPE_FLOAT16: "<f2", pb2.DTYPE_UINT8: "|u1"}
    return np.frombuffer(tensor.data, dtype=dtypes[tensor.dtype]).reshape(tuple(tensor.shape))


def list_models(stub, pb2, call_args):
    response = stub.ListModels(pb2.ListModelsRequest(), **call_args)
    print("models:")
    for model in response.models:
        default = " (default)" if model.name == response.default_model else ""
        names = {v: k for k, v in SAMPLERS.items()}
        samplers = ",".join(names.get(pb2.SamplerKind.Name(s), str(s)) for s in model.samplers)
        extra = (f", recommended classifier scale {model.default_classifier_scale:g}"
                 if model.default_classifier_scale else "")
        print(f"  {model.name}{default}: {model.image_size}x{model.image_size}, "
              f"{model.num_classes} classes, classifier={model.has_classifier}, "
              f"{model.diffusion_steps} steps, samplers {samplers}{extra}")


def make_request(args, pb2):
    return pb2.SampleRequest(
        model=args.model,
        labels=args.labels,
        classifier_scale=args.classifier_scale,
        sampler=pb2.SamplerKind.Value(SAMPLERS[args.sampler]),
        eta=args.eta,
        timestep_respacing=args.timestep_respacing,
        steps=args.steps,
        solver_order=args.solver_order,
        skip_type=pb2.SkipType.Value(SKIP_TYPES[args.skip_type]) if args.skip_type else 0,
        dynamic_thresholding_ratio=args.dynamic_thresholding_ratio,
        seed=args.seed,
        # PNGs come by default; also ask for the uint8 array to show Tensor decoding.
        output=pb2.OutputOptions(uint8=True))


def sample(stub, pb2, args, call_args):
    started = time.monotonic()
    response = stub.Sample(make_request(args, pb2), **call_args)
    images = tensor_to_numpy(response.images_uint8, pb2)
    print(f"Sample: request {response.request_id}, {len(response.png)} images {images.shape} "
          f"(N, H, W, C) in {time.monotonic() - started:.1f} s, {response.steps} steps")
    for i, (png, label) in enumerate(zip(response.png, response.labels)):
        write(os.path.join(args.out_dir, f"sample_{i:02d}_class{label}.png"), png)


def stream_sample(stub, pb2, args, call_args):
    request = make_request(args, pb2)
    request.stream.CopyFrom(pb2.StreamOptions(
        every=args.every, pred_xstart=True, format=pb2.StreamOptions.FORMAT_PNG))
    preview_dir = os.path.join(args.out_dir, "stream")
    os.makedirs(preview_dir, exist_ok=True)
    for event in stub.StreamSample(request, **call_args):
        kind = event.WhichOneof("event")
        if kind == "accepted":
            print(f"StreamSample: request {event.accepted.request_id} accepted, "
                  f"{event.accepted.total_steps} steps, "
                  f"{event.accepted.queued_images_ahead} images queued ahead")
        elif kind == "step":
            step = event.step
            # DPM-Solver++ calls the networks between integer timesteps: show the time they saw
            # (servers before continuous_timestep send 0 there).
            t = step.continuous_timestep or step.timestep
            print(f"  step {step.step + 1}/{step.total_steps} (t={t:g}), "
                  f"{step.images_per_second:.2f} images/s", flush=True)
            for i, png in enumerate(step.pred_xstart_png):
                write(os.path.join(preview_dir, f"pred_xstart_{step.step:04d}_{i:02d}.png"), png)
        elif kind == "result":
            result = event.result
            for i, (png, label) in enumerate(zip(result.png, result.labels)):
                write(os.path.join(args.out_dir, f"stream_{i:02d}_class{label}.png"), png)
            print(f"StreamSample: done in {result.sampling_seconds:.1f} s")


def main():
    args = parse_args()
    import grpc  # after argparse, so --help works without python3-grpcio

    os.makedirs(args.out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gd_stubs_") as stub_dir:
        pb2, pb2_grpc = load_stubs(stub_dir)
    call_args = {"timeout": args.timeout_s}
    if args.auth_token:
        call_args["metadata"] = [("authorization", f"Bearer {args.auth_token}")]
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
    with grpc.insecure_channel(args.server, options=options) as channel:
        stub = pb2_grpc.SamplerStub(channel)
        try:
            list_models(stub, pb2, call_args)
            sample(stub, pb2, args, call_args)
            stream_sample(stub, pb2, args, call_args)
        except grpc.RpcError as error:
            print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    print(f"PNGs written to {args.out_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
