# PeakRoute worker / api image (used by docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md requirements.lock ./
COPY peakroute ./peakroute
# The tested versions of every package, transitive ones included (see Makefile / requirements.lock).
RUN pip install --no-cache-dir -c requirements.lock .
USER nobody
ENTRYPOINT ["peakroute"]
CMD ["--help"]
