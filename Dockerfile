# sym-circleci-approver container image.
#
#   docker build -t sym-circleci-approver .
#       The default: compiles in the official Rust image (pinned to the crate's rust-version) and
#       ships the static binary in an empty (`scratch`) image. This is what users with a registry run.
#
#   docker build --target prebuilt -t sym-circleci-approver <context with prebuilt/> -f Dockerfile
#       For machines that cannot pull images (this project's CI): packages a binary built on the
#       host. The context must hold prebuilt/sym-circleci-approver (static),
#       prebuilt/ca-certificates.crt and an empty prebuilt/data/ directory; .ci/container-test.sh
#       assembles such a context. The stage comes BEFORE the Rust stage on purpose: the legacy
#       builder (no BuildKit) builds every stage up to --target in file order, so it never reaches
#       `FROM rust` and never tries to pull it.
#
# Both runtime stages derive from `runtime-base`, so the two images carry the same user, ports,
# volume, environment, health check and entrypoint. No `# syntax=` line: it would make BuildKit
# pull a frontend image, which registry-less machines cannot do.

ARG RUST_VERSION=1.89

# --- runtime-base: metadata only, no files -------------------------------------------------------
FROM scratch AS runtime-base

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="sym-circleci-approver" \
      org.opencontainers.image.description="Approves CircleCI hold jobs when the matching Sym request is approved (signed Standard Webhooks delivery)." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="scratch"

# Triple-slash sqlite URL = absolute path /data/approver.db, on the volume below.
ENV DATABASE_URL=sqlite:///data/approver.db \
    LISTEN_ADDR=0.0.0.0:8080 \
    LOG_FORMAT=json

EXPOSE 8080

# Numeric ids: scratch has no /etc/passwd, and Kubernetes' runAsNonRoot can only verify numbers.
USER 10001:10001

# The service drains in-flight requests and its worker on SIGTERM, then exits 0.
STOPSIGNAL SIGTERM

# Exec form: the image has no shell. Docker 20.10 has no --start-interval, so the first probe runs
# after --interval; 10 s keeps "healthy" well inside 30 s of start.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["/sym-circleci-approver", "healthcheck"]

ENTRYPOINT ["/sym-circleci-approver"]
CMD ["serve"]

# --- prebuilt: runtime image from a host-built static binary (CI; no image pull) -----------------
FROM runtime-base AS prebuilt
COPY prebuilt/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# Created here (owned by the service user) so a fresh named volume inherits that ownership.
COPY --chown=10001:10001 prebuilt/data /data
COPY prebuilt/sym-circleci-approver /sym-circleci-approver
VOLUME ["/data"]

# --- builder: static glibc binary from the official Rust image --------------------------------
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# +crt-static with an explicit --target links the binary statically while build scripts and
# proc-macros (built for the host) stay dynamic, as they must. Packed relative relocations keep
# 300 kB of relocation records out of the image's binary (.cargo/config.toml says why); this
# RUSTFLAGS replaces that file's flags, so it repeats the one it needs.
ENV RUSTFLAGS="-C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs" \
    CARGO_TERM_COLOR=never \
    CARGO_TARGET=x86_64-unknown-linux-gnu

# 1) Dependencies only, against placeholder sources: this layer is reused until Cargo.toml or
#    Cargo.lock change, so editing src/ does not recompile the dependency tree.
COPY Cargo.toml Cargo.lock ./
COPY .cargo ./.cargo
COPY crates ./crates
RUN mkdir -p src/bin/approver-dev \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > src/bin/approver-dev/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --target "${CARGO_TARGET}" --bin sym-circleci-approver \
 && rm -rf src

# 2) The real sources. sqlx::migrate! embeds migrations/ at compile time. COPY keeps the files'
#    own mtimes, which can be older than the placeholder build, so touch them to force cargo to
#    rebuild the crate itself.
COPY build.rs ./
COPY src ./src
COPY migrations ./migrations
RUN find src migrations build.rs -type f -exec touch {} + \
 && cargo build --release --locked --target "${CARGO_TARGET}" --bin sym-circleci-approver \
 && mkdir -p /out/data \
 && cp "target/${CARGO_TARGET}/release/sym-circleci-approver" /out/ \
 && chown 10001:10001 /out/data

# Refuse to ship a dynamically linked binary: scratch has no loader or libc. (No pipes here, so
# no pipefail shell is needed.)
RUN out="$(ldd /out/sym-circleci-approver 2>&1 || true)"; echo "ldd: ${out}"; \
    case "${out}" in *"=>"*) echo "sym-circleci-approver is dynamically linked" >&2; exit 1;; esac

# --- runtime (default target): the scratch image users run ---------------------------------------
FROM runtime-base AS runtime
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=builder --chown=10001:10001 /out/data /data
COPY --from=builder /out/sym-circleci-approver /sym-circleci-approver
VOLUME ["/data"]
