"""The control plane's rules and state changes, as pure Python.

``ControlPlane.handle(action, params, request_id, now)`` validates one RPC call
against the platform's rules and, if it passes, returns what to write: records for
the control state, batch definitions, the ``BatchControl`` records the engine must
see, and device-scoped records (registrations, targets, task commands). Nothing is
written when a rule fails: every check runs before the outcome is built, and the
command agent applies an outcome whole.

The command agent runs it on the single-partition command topic, one command at a
time, so two concurrent calls can never both pass a rule meant for one. Reads
(Query*/List* of the control state) run there too, which gives read-your-writes.

Operations live in modules by concern: ``firmware`` (packages, modules), ``jobs``
(batches, task actions), ``registry`` (products, devices, groups); rules shared by
batches in ``rules``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from otaflow.api.params import ParamError, unflatten
from otaflow.config import DEV_DEVICE_KEY
from otaflow.control.common import ControlStore, Outcome, Record
from otaflow.control.errors import ApiError
from otaflow.control.firmware import FirmwareOps, StoredFile
from otaflow.control.guard import GuardOps
from otaflow.control.jobs import JobOps, rate_from_params, rate_settings
from otaflow.control.registry import RegistryOps

__all__ = ["ControlPlane", "ControlStore", "Outcome", "Record", "rate_from_params", "rate_settings"]

#: Operations answered from the control state without changing it.
READS = frozenset(
    {
        "QueryOTAFirmware",
        "ListOTAFirmware",
        "ListOTAModuleByProduct",
        "QueryOTAJob",
        "ListOTAJobByFirmware",
        "ListOTAJobInvalidDeviceNames",
        "QueryProduct",
        "QueryDeviceDetail",
        "QueryBatchRegisterDeviceStatus",
        "QueryPageByApplyId",
        "QueryDeviceGroupList",
        "QueryDeviceGroupInfo",
    }
)


#: Commands the engine sends the control plane (never callable through the API: their
#: names are not operations ``supports`` knows), to the method that applies each.
INTERNAL = {
    "otaflow.PhasedCount": "phased_count",
    "otaflow.CohortOutcomes": "cohort_outcomes",
    "otaflow.OpenTaskCount": "open_task_count",
}
#: Operations only otaflow's own components send on the command topic, in the API's
#: parameter form (the API answers them as unknown).
INTERNAL_OPERATIONS = frozenset({"RecordVerifyOutcome"})


def _no_name_lists(url: str) -> str:
    raise FileNotFoundError(url)


class ControlPlane(FirmwareOps, JobOps, GuardOps, RegistryOps):
    def __init__(
        self,
        store: ControlStore,
        file_path_of: Callable[[str], str],
        read_name_list: Callable[[str], str] = _no_name_lists,
        stored_file: Callable[[str], StoredFile | None] | None = None,
        device_partitions: int = 1,
        device_key: str = DEV_DEVICE_KEY,
    ) -> None:
        self.store = store
        # How many device partitions report a phased batch's counts.
        self.device_partitions = device_partitions
        # The server key device secrets are derived from (otaflow.edge.credentials).
        self.device_key = device_key
        # Maps a FirmwareUrl given to CreateOTAFirmware to a path in the package store.
        self.file_path_of = file_path_of
        # Reads a device-name list file (DnListFileUrl) from the package store.
        self.read_name_list = read_name_list
        # Size and digests of an uploaded package (None: no package store attached).
        self.stored_file = stored_file

    @staticmethod
    def supports(action: str) -> bool:
        return (
            callable(getattr(ControlPlane, f"_{action}", None))
            and action[:1].isupper()
            and action not in INTERNAL_OPERATIONS
        )

    def handle(
        self, action: str, flat_params: Mapping[str, str], request_id: str, now: int
    ) -> Outcome:
        internal = INTERNAL.get(action)
        if internal is not None:
            outcome: Outcome = getattr(self, internal)(dict(flat_params), request_id, now)
            return outcome
        if not (self.supports(action) or action in INTERNAL_OPERATIONS):
            raise ApiError(
                "InvalidApi.NotFound",
                "Specified api is not found, please check your url and method.",
                404,
            )
        try:
            params = unflatten(dict(flat_params))
        except ParamError as exc:
            raise ApiError(exc.code, exc.message, exc.http_status) from None
        handler = getattr(self, f"_{action}")
        outcome = handler(params, request_id, now)
        return outcome
