# Warden: one image for every role. Build: docker build -t warden .
# The runtime is Node 24 LTS; dependencies come from package-lock.json.
FROM node:24-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
# The image has its own Node 24, so skip the pinned "node" devDependency's download.
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force && npm install --no-save tsx@4

FROM node:24-bookworm-slim
ENV NODE_ENV=production \
    WARDEN_GRPC_LISTEN=0.0.0.0:50051 \
    WARDEN_HTTP_LISTEN=0.0.0.0:8080 \
    WARDEN_DATA_DIR=/var/lib/warden
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json tsconfig.json ./
COPY bin ./bin
COPY src ./src
RUN mkdir -p /var/lib/warden && chown node:node /var/lib/warden
USER node
EXPOSE 50051 8080
VOLUME ["/var/lib/warden"]
ENTRYPOINT ["node", "--import", "tsx", "src/cli/main.ts"]
CMD ["serve"]
