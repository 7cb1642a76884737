# postern in a container: a static binary on an empty image, run as an
# unprivileged user, its data on the /data volume. See README, "Docker".
#
#   docker build -t postern .
#   docker run -d --name postern -p 587:587 -p 465:465 \
#     -v postern-data:/data -v $PWD/etc:/etc/postern:ro postern
#
# The configuration is the file /etc/postern/postern.yaml (mount it, with
# the users file and DKIM keys beside it), or any file $POSTERN_CONFIG
# names; secrets such as a smarthost's password can come from the
# environment (delivery.smarthosts[].password_env). Set data_dir: /data.

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=docker
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-X main.version=${VERSION}" -o /out/postern ./cmd/postern
# The volume's mount point, owned by the user postern runs as, so that a
# new named volume starts out writable by it.
RUN mkdir -p /out/data /out/etc/postern && chown 65532:65532 /out/data

FROM scratch
# CA certificates: smarthosts, MTA-STS policies and ACME are verified.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/postern /usr/bin/postern
COPY --from=build --chown=65532:65532 /out/data /data
COPY --from=build /out/etc/postern /etc/postern
COPY configs/postern.example.yaml /etc/postern/postern.example.yaml
USER 65532:65532
ENV POSTERN_CONFIG=/etc/postern/postern.yaml
VOLUME /data
# Docker lets an unprivileged user bind ports below 1024 inside the
# container (net.ipv4.ip_unprivileged_port_start=0) since 20.10.
EXPOSE 25 465 587
# SIGTERM finishes messages in transfer (shutdown_timeout): give
# `docker stop` more than its default 10 s, e.g. --stop-timeout 45.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/postern"]
CMD ["serve"]
