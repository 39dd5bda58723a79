# PeakRoute worker / api image (used by docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md requirements.lock ./
COPY peakroute ./peakroute
# The tested versions of every package, transitive ones included (see Makefile / requirements.lock).
RUN pip install --no-cache-dir -c requirements.lock .
# The state dir (table files, faust's bookkeeping) writable by the unprivileged user: /app is root's.
# A named volume mounted here starts with this directory's owner (docker-compose.yml: one per worker).
RUN mkdir -p /var/lib/peakroute && chown nobody:nogroup /var/lib/peakroute
ENV PEAKROUTE_STATE_DIR=/var/lib/peakroute
USER nobody
ENTRYPOINT ["peakroute"]
CMD ["--help"]
