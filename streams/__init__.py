# Importing otaflow first makes stale compiled builds of streams' hot-path modules load
# from source (otaflow.native).
import otaflow  # noqa: F401
