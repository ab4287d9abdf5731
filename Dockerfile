# syntax=docker/dockerfile:1
#
# One image, four binaries: `tern` (the proxy), `tern-sync` (S3 -> shared volume),
# `tern-validate` (CI) and `tern-import` (Envoy configuration -> Tern). They share one
# configuration model, so they are built from one commit and shipped together; see docs/ecs.md
# ("The image").
#
#   docker build -t tern .
#   docker run --rm -p 10000:10000 -v "$PWD/config-examples/compose:/config/current:ro" tern
#
# The image has no shell and no curl: health checks use `tern health` and `tern-sync health`.

# Exact: link/tern.order (the function order of tern's release link) names functions as this
# toolchain mangles them; tests/link_order.rs checks that the two agree.
ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Sources only (see .dockerignore); Cargo.lock pins every dependency (--locked).
COPY . .
# BuildKit caches: the registry and target/ survive between builds, so a change in src/ only
# recompiles the workspace crates. The binaries are copied out of the cache mount. `tern` is built
# on its own so its features are not unified with tern-sync's (it would link a second TLS provider,
# aws-lc, whose start-up constructor costs idle memory): the same binary bench/ measures.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tern --bins \
 && cargo build --release --locked -p tern-sync -p tern-validate --bins \
 && mkdir -p /out/bin /out/root/config \
 && cp target/release/tern target/release/tern-sync target/release/tern-validate target/release/tern-import /out/bin/ \
 && objcopy --strip-debug /out/bin/tern \
 && objcopy --strip-debug /out/bin/tern-sync \
 && objcopy --strip-debug /out/bin/tern-validate \
 && objcopy --strip-debug /out/bin/tern-import

# distroless/cc: glibc, libgcc, CA certificates (tern-sync talks TLS to S3, tern to an https OTLP collector), no shell, no package
# manager; the :nonroot tag runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/bin/ /usr/local/bin/
# The shared configuration volume. Owned by the non-root user so that a fresh Docker named volume
# or an ECS bind-mount volume (ECS copies the VOLUME path's contents and ownership into it) is
# writable by tern-sync without root.
# (Copied as an entry of /out/root/ so that --chown applies to the directory itself.)
COPY --from=build --chown=65532:65532 /out/root/ /
VOLUME ["/config"]
USER 65532:65532
# Listeners of the examples: 10000 (compose; egress in the ECS example, loopback there) and 8000
# (ECS ingress). The admin endpoint (9901) and tern-sync's health endpoint (9902) stay on loopback.
EXPOSE 8000 10000
ENV TERN_CONFIG=/config/current \
    TERN_LOG_FORMAT=json \
    TERN_SYNC_DEST=/config
# Exec form, no shell: exits 0 iff the admin endpoint's /ready answers 200.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["tern", "health"]
# No ENTRYPOINT: the command picks the binary (`tern-sync run`, `tern-validate /config`, ...).
CMD ["tern"]
