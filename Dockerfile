# Warden: one image for every role (serve, control-plane, sidecar); the first
# argument picks the role. Build: docker build -t warden:0.1.0 .
#
#   docker run --rm -v warden-data:/var/lib/warden warden:0.1.0 keys bootstrap --data-dir /var/lib/warden
#       the first admin API key (printed once), then:
#   docker run -p 50051:50051 -p 8080:8080 -v warden-data:/var/lib/warden warden:0.1.0
#       all-in-one on the embedded store (the default command below)
#   docker run warden:0.1.0 control-plane --help
#   docker run warden:0.1.0 sidecar --help
#
# Kubernetes manifests are in deploy/; test/deploy/ keeps this file and them
# in agreement with the code's flags.

# The same Node.js as the pinned "node" devDependency that tests run on.
ARG NODE_VERSION=24.21.0

# --- build: TypeScript to JavaScript in /app/dist ---------------------------
FROM node:${NODE_VERSION}-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
# npm install, not npm ci: the lock lacks buf's binaries for other platforms,
# which npm ci insists on (see .ci/run); install still follows the lock.
# --ignore-scripts: the image has its own Node, so the "node" devDependency
# must not download another one; nothing needed to compile has a script.
RUN npm install --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# --- prod-deps: runtime dependencies only -----------------------------------
FROM node:${NODE_VERSION}-bookworm-slim AS prod-deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm install --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force

# --- runtime ----------------------------------------------------------------
FROM node:${NODE_VERSION}-bookworm-slim AS runtime
# Warden runs node directly: no package manager should be runnable in the
# server image (this hides them; the base layer keeps their bytes).
RUN rm -rf /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/corepack \
      /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack /opt/yarn-* \
      /usr/local/bin/yarn /usr/local/bin/yarnpkg \
    && mkdir -p /var/lib/warden && chown 1000:1000 /var/lib/warden
ENV NODE_ENV=production
WORKDIR /app
# Root-owned and read-only to the server: it never rewrites its own code.
COPY --from=prod-deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
# "type": "module" for dist/, and the version that `warden --version` prints.
COPY package.json ./
# Numeric, so Kubernetes can verify runAsNonRoot (the image's "node" user).
USER 1000:1000
# 50051 and 8080: the default command (serve). 50052, 8081 and 8090: the
# control plane's gRPC, HTTP and health listeners and the sidecar's health
# listener in deploy/ (the sidecar's API stays on loopback).
EXPOSE 50051 8080 50052 8081 8090
# node is PID 1: Warden handles SIGTERM and SIGINT itself (drain, close the
# store) and starts no child processes, so no init is needed.
ENTRYPOINT ["node", "dist/cli/main.js"]
# Listeners default to loopback; in a container they must bind every
# interface to be reachable, and then callers must authenticate (API keys,
# session tokens) as they must with the control plane. Kubernetes args
# replace this whole line.
CMD ["serve", "--grpc-listen", "0.0.0.0:50051", "--http-listen", "0.0.0.0:8080", "--data-dir", "/var/lib/warden", "--require-auth", "true"]
