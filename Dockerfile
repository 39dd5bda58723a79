# PeakRoute worker / api image (used by docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY peakroute ./peakroute
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT ["peakroute"]
CMD ["--help"]
