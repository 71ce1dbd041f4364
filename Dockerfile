# gd-server, CPU image: Debian 12's LibTorch 1.13, gRPC 1.51 and friends, the same packages CI
# builds and tests with (scripts/install-deps.sh).
#
#   docker build -t gd-server:0.1.0-cpu .
#   docker run --rm -p 50051:50051 -p 9090:9090 gd-server:0.1.0-cpu
#
# The GPU image is Dockerfile.gpu: it needs a different base (CUDA) and a different LibTorch (a
# CUDA build from download.pytorch.org), so the two share no build step worth an ARG switch.
# Build and run are separate stages: the runtime stage holds the shared libraries the binaries
# link (and what those pull in), not compilers, headers, the training dataset or Python.

ARG DEBIAN_IMAGE=debian:12
ARG DEBIAN_RUNTIME_IMAGE=debian:12-slim

# ---- build ---------------------------------------------------------------------------------
FROM ${DEBIAN_IMAGE} AS build
# LibTorch translation units need ~1.5 GB of memory each; raise this on a larger build machine.
ARG BUILD_JOBS=2
WORKDIR /src
# The dependency layer first, so that source edits do not reinstall ~2 GB of packages. The script
# is the one CI runs (it installs test-only packages too; they stay in this stage).
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN bash scripts/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
# Tests are CI's job (they need GoogleTest and the fixtures); the image builds only what it ships.
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGD_BUILD_TESTS=OFF \
 && cmake --build build --target gd-server gd -j "${BUILD_JOBS}"

# ---- runtime -------------------------------------------------------------------------------
FROM ${DEBIAN_RUNTIME_IMAGE} AS runtime
# The runtime packages of the -dev packages gd-server and gd link against (readelf NEEDED, mapped
# with dpkg -S on Debian 12). libopenblas0-openmp is named so that LibTorch's BLAS is OpenBLAS,
# as in CI, not the reference libblas3. libcpp-httplib0.11 is gd_http's HTTP library (the metrics
# endpoint, gd view; it brings libssl3 and libbrotli1, which it links). tini is PID 1: it
# forwards SIGTERM to gd-server (whose drain depends on receiving it) and reaps zombies.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libtorch1.13 libopenblas0-openmp \
      libgrpc++1.51 libgrpc29 libprotobuf32 libabsl20220623 \
      libspdlog1.10 libfmt9 libpng16-16 zlib1g libzip4 libgif7 libcpp-httplib0.11 \
      tini \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/build/bin/gd-server /src/build/bin/gd /usr/local/bin/
# Fail the image build, not the first pod, if a shared library is missing.
RUN ! ldd /usr/local/bin/gd-server /usr/local/bin/gd | grep 'not found'
# The bundled model: gd-server looks here when no model flag is given (server/server_main.cc).
# This COPY fails until models/fashion-mnist has been trained and committed, by design.
COPY models/fashion-mnist /usr/share/gd/models/fashion-mnist
# A numeric non-root user, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
RUN groupadd --system --gid 10001 gd \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent gd
USER 10001:10001
EXPOSE 50051 9090
# Docker's own check (Kubernetes ignores it and uses the Deployment's gRPC probes). Exits 0 only
# when the health service says SERVING, i.e. every model is loaded and the server is not
# draining. It assumes the default --port and plaintext; with --tls_cert override it.
HEALTHCHECK --interval=15s --timeout=12s --start-period=120s --retries=3 \
  CMD ["gd", "health", "--server", "127.0.0.1:50051"]
ENTRYPOINT ["/usr/bin/tini", "--", "gd-server"]
