# syntax=docker/dockerfile:1
#
# revdesk-dialer image: `docker build -t revdesk-dialer:TAG .`
#
# Stage 1 compiles the `dialer` binary; stage 2 is a small Debian runtime with the
# binary, the default configuration and CA certificates, running as a numeric
# non-root user. See deploy/README.md for how the Kubernetes manifests use it.

############################ builder ############################
FROM rust:1.95-bookworm AS builder
WORKDIR /build

# The sqlx query macros must not reach for a database inside `docker build`:
# they read the prepared query data in `.sqlx/` (kept in the build context).
ENV SQLX_OFFLINE=true

# --- Dependency layer -------------------------------------------------------
# Built from Cargo.toml + Cargo.lock alone, so it is reused until a dependency
# changes. The manifest's [[bench]]/[[test]]/[[example]] targets are stripped
# here (their files are not in this layer, and cargo refuses to resolve a bench
# whose file is missing); we only build the `dialer` binary. A stub build.rs
# makes any build-dependencies compile in this layer too.
COPY Cargo.toml Cargo.lock ./
RUN awk '/^\[\[(bench|test|example)\]\]/{skip=1; next} /^\[/{skip=0} !skip' Cargo.toml > Cargo.deps.toml \
    && mv Cargo.deps.toml Cargo.toml \
    && mkdir -p src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > build.rs \
    && cargo build --release --locked --bin dialer \
    && rm -rf src build.rs \
       target/release/.fingerprint/revdesk-dialer-* \
       target/release/build/revdesk-dialer-* \
       target/release/deps/dialer-* \
       target/release/deps/libdialer-* \
       target/release/dialer

# --- The real build -----------------------------------------------------------
# `.dockerignore` is an allowlist: only the manifest, src/, migrations/ (embedded
# by `sqlx::migrate!`), config/, data/ (tables embedded in the binary), build.rs
# and .sqlx/ reach this COPY, whichever of them exist. Test, bench and example
# targets are stripped again for the same reason as above.
COPY . .
RUN awk '/^\[\[(bench|test|example)\]\]/{skip=1; next} /^\[/{skip=0} !skip' Cargo.toml > Cargo.bin.toml \
    && mv Cargo.bin.toml Cargo.toml \
    && cargo build --release --locked --bin dialer \
    && install -D -m 0755 target/release/dialer /out/dialer \
    && install -D -m 0644 config/default.toml /out/default.toml

############################ runtime ############################
FROM debian:bookworm-slim AS runtime

# ca-certificates: reqwest (rustls) verifies RevDesk's TLS certificate against the
# system roots. Nothing else is installed: chrono-tz embeds the tz database.
# DL3008 is ignored on purpose: pinning the exact Debian revision breaks the build
# as soon as bookworm's security archive replaces it, and for a CA bundle the
# newest revision of the stable release is the one we want.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 dialer \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin dialer

COPY --from=builder /out/dialer /usr/local/bin/dialer
COPY --from=builder /out/default.toml /app/config/default.toml

# The dialer reads config/default.toml relative to its working directory; the
# operator's file (Kubernetes ConfigMap) is given with --config.
WORKDIR /app

# Numeric so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001

# http.listen: webhooks, /metrics, /healthz, /readyz.
EXPOSE 9000

ENTRYPOINT ["dialer"]
CMD ["run", "--config", "/etc/dialer/config.toml"]
