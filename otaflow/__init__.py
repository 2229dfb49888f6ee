# Before any hot-path module is imported: compiled builds only where they match their
# source (otaflow.native).
from otaflow import native as _native

_native.install()
