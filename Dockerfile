# cleanpipe container image.
# Build:  docker build -t cleanpipe .
# Run:    docker run -p 53:53/udp -p 53:53/tcp \
#           -v /etc/cleanpipe:/etc/cleanpipe:ro -v /srv/cleanpipe/policy:/var/lib/cleanpipe/policy \
#           -v /srv/cleanpipe/state:/var/lib/cleanpipe/state -e CLEANPIPE_ADMIN_TOKEN=... cleanpipe
# The build stage runs the same cargo command as CI's release build (`cargo build --release --locked`).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY zones zones
COPY examples examples
COPY allowlists allowlists
COPY web web
RUN cargo build --release --locked --bin cleanpipe

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libcap2-bin \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home --uid 10053 cleanpipe \
 && mkdir -p /etc/cleanpipe /var/lib/cleanpipe/policy /var/lib/cleanpipe/state /usr/share/cleanpipe \
 && chown -R cleanpipe /var/lib/cleanpipe
COPY --from=build /src/target/release/cleanpipe /usr/local/bin/cleanpipe
# Bind port 53 (and 80 for the cleanup page) without running as root.
RUN setcap cap_net_bind_service=+ep /usr/local/bin/cleanpipe
COPY allowlists /usr/share/cleanpipe/allowlists
COPY zones /usr/share/cleanpipe/zones
COPY examples/production.yaml /etc/cleanpipe/cleanpipe.yaml
USER cleanpipe
VOLUME ["/etc/cleanpipe", "/var/lib/cleanpipe/policy", "/var/lib/cleanpipe/state"]
# 853 DNS over TLS and 443 DNS over HTTPS are served when the mounted configuration has `tls:`.
EXPOSE 53/udp 53/tcp 853/tcp 443/tcp 80/tcp 8053/tcp
HEALTHCHECK --interval=10s --timeout=3s CMD ["cleanpipe", "ready", "--config", "/etc/cleanpipe/cleanpipe.yaml"]
ENTRYPOINT ["cleanpipe"]
CMD ["serve", "--config", "/etc/cleanpipe/cleanpipe.yaml"]
