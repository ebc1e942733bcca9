# hq-gateway: slim, non-root, with a healthcheck. Build: docker build -t hq-gateway .
# The console's STOMP/SockJS browser bundles come from the locked npm packages (no CDN at run time).
FROM node:20-slim AS vendor
WORKDIR /console
COPY console/package.json console/package-lock.json ./
RUN npm ci --no-audit --no-fund

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY gateway ./gateway
COPY --from=vendor /console/node_modules/@stomp/stompjs/bundles/stomp.umd.min.js gateway/static/vendor/
COPY --from=vendor /console/node_modules/sockjs-client/dist/sockjs.min.js gateway/static/vendor/
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home /app gateway
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY config ./config
COPY gateway/data/mapping.toml ./config/mapping.toml
USER gateway
# Secure by default: with GATEWAY_AUTH_MODE unset (none) the gateway refuses this non-loopback bind;
# set GATEWAY_AUTH_MODE=jwt or hq (or, for a demo, GATEWAY_AUTH_ALLOW_INSECURE_BIND=true).
ENV GATEWAY_HOST=0.0.0.0 GATEWAY_PORT=8080 PYTHONUNBUFFERED=1
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["hq-gateway"]
CMD ["serve", "--config", "config/gateway.toml"]
