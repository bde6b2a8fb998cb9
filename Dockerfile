# Eventline's image: `eventctl` and the sample domain's projections, nothing else.
#   docker build -t eventline .
#   docker run --rm -e EVENTLINE_DATABASE_URL=postgres://… eventline migrate
# The runtime stage installs exactly the shared libraries eventctl links (the test
# "every library eventctl links comes from a package the runtime stage installs" keeps this list
# honest); the Swift runtime is linked statically.

FROM swift:6.3-bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends pkg-config libpq-dev liblz4-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so that a source change does not fetch them again.
COPY Package.swift ./
RUN swift package resolve
COPY Sources Sources
COPY Plugins Plugins
COPY Schemas Schemas
COPY Tests Tests
COPY Benchmarks Benchmarks
RUN swift build -c release --product eventctl --static-swift-stdlib \
 && install -D "$(swift build -c release --show-bin-path)/eventctl" /out/usr/local/bin/eventctl
COPY Projections /out/etc/eventline/projections

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libc6 libgcc-s1 libstdc++6 zlib1g libpq5 liblz4-1 libssl3 ca-certificates curl tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin eventline
COPY --from=build /out/ /
USER eventline
ENV EVENTLINE_PROJECTIONS_DIR=/etc/eventline/projections \
    EVENTLINE_HTTP_HOST=0.0.0.0 \
    EVENTLINE_HTTP_PORT=8080 \
    EVENTLINE_METRICS_HOST=0.0.0.0 \
    EVENTLINE_LOG_FORMAT=json
EXPOSE 8080
# The server's readiness; projector and reactor containers override it (docker-compose.yml).
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${EVENTLINE_HTTP_PORT}/health/ready" >/dev/null || exit 1
ENTRYPOINT ["eventctl"]
CMD ["serve"]
