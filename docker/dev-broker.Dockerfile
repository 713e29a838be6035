# syntax=docker/dockerfile:1.7
# The embedded dev broker of `cargo xtask up` (nisshi, Tansu's successor) as an image, for
# docker/compose.dev-broker.yaml. Same version and features as xtask installs.
FROM rust:1.95-bookworm AS build
RUN cargo install nisshi --version 0.8.1 --locked --ignore-rust-version \
    --no-default-features --features dynostore,libsql --root /out

FROM debian:12.12-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10002 --home-dir /var/lib/nisshi --create-home nisshi \
    && mkdir /var/lib/nisshi/data && chown nisshi:nisshi /var/lib/nisshi/data
COPY --from=build /out/bin/nisshi /usr/local/bin/nisshi
USER nisshi
WORKDIR /var/lib/nisshi
STOPSIGNAL SIGTERM
ENTRYPOINT ["nisshi"]
