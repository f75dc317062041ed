FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY bots ./bots
COPY handlers ./handlers
COPY state ./state
COPY templates ./templates
RUN pip install --no-cache-dir -e .
ENV KEFU_HOST=0.0.0.0 KEFU_PORT=8080 KEFU_DATA_DIR=/data
VOLUME /data
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)" || exit 1
CMD ["kefu", "demo"]
