# syntax=docker/dockerfile:1
# keygate's container image: a release build, then a runtime image holding only the binary,
# the C library it links against and CA certificates (for rediss://), run as a non-root user.
#
#   docker build --build-arg KEYGATE_GIT_REVISION=$(git rev-parse --short=12 HEAD) -t keygate:0.1.0 .
#   docker run --rm -p 9191:9191 keygate:0.1.0

FROM rust:1.95-bookworm AS build
WORKDIR /src
# `.git` stays out of the build context: the revision `keygate --version` and the
# keygate_build_info metric report comes from this argument.
ARG KEYGATE_GIT_REVISION=unknown
ENV KEYGATE_GIT_REVISION=${KEYGATE_GIT_REVISION}
COPY . .
# The same release build as everywhere else: Cargo.lock exactly as committed.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/keygate /out/keygate \
    && install -d -m 0700 /out/data

# glibc, libgcc and CA certificates; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12
COPY --from=build /out/keygate /usr/local/bin/keygate
COPY --from=build --chown=65532:65532 /out/data /var/lib/keygate
ENV KEYGATE_DATA_DIR=/var/lib/keygate
# 9191 data plane (ext_authz Check, Authorize), 9192 management API, 9090 Prometheus metrics.
EXPOSE 9191 9192 9090
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/keygate"]
CMD ["serve"]
