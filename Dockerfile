# syntax=docker/dockerfile:1
# tokenwarden: one static binary (issuer, sidecar, injector, admin tools) on distroless.
#
#   docker build -t tokenwarden:dev --build-arg VERSION=$(git describe --tags --always --dirty) \
#     --build-arg COMMIT=$(git rev-parse HEAD) .
#
# The image runs as the numeric non-root user 65532, needs no shell and no writable root
# filesystem (the sidecar's optional cache directory is a mounted volume).

# The Makefile's toolchain: a 1.26 release with the standard library's security fixes.
ARG GO_VERSION=1.26.10

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
WORKDIR /src
# Dependencies first, so code changes do not invalidate the module cache layer.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG TARGETOS=linux
ARG TARGETARCH
ARG VERSION=dev
ARG COMMIT=unknown
# The Makefile's build: static, reproducible paths, the same ldflags.
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" \
      -o /out/tokenwarden ./cmd/tokenwarden

FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
LABEL org.opencontainers.image.title="tokenwarden" \
      org.opencontainers.image.description="OAuth2 issuer, local token-verifying sidecar and its Kubernetes injector" \
      org.opencontainers.image.source="https://github.com/tokenwarden/tokenwarden" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/tokenwarden /tokenwarden
USER 65532:65532
EXPOSE 8080 8181 8443
ENTRYPOINT ["/tokenwarden"]
CMD ["--help"]
