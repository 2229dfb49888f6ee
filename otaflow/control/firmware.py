"""Update packages (the platform's "OTA firmware") and OTA modules."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from otaflow.control import errors as E
from otaflow.control.common import (
    OpsBase,
    Outcome,
    Record,
    drop_none,
    gmt,
    opt_bool,
    opt_int,
    opt_list,
    opt_str,
    page,
    read,
    req_str,
    utc,
)
from otaflow.control.errors import ApiError, invalid, missing
from otaflow.control.ids import derived_id
from otaflow.control.rules import job_status

_VERSION = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# The platform's name rule, widened to the spaces and periods that operators use.
_FIRMWARE_NAME = re.compile(r"^[\w\u4e00-\u9fa5][\w\u4e00-\u9fa5 ().\-]{0,39}$")
_MODULE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MAX_MODULES_PER_PRODUCT = 10

# Firmware.verify_status (see schemas/otaflow.Firmware.avsc) -> the API's Status.
_STATUS_OF_VERIFY = {0: 0, 1: 2, 2: 1, 3: 3}
UNVERIFIED, VERIFYING, VERIFIED, VERIFY_FAILED = 0, 1, 2, 3
#: The console's limit for one package file over HTTPS.
MAX_PACKAGE_BYTES = 1000 * 1024 * 1024
#: Files of one package (CreateOTAFirmware MultiFiles).
MAX_FILES = 20
#: Task statuses that end a verification device's part.
_NOT_SUCCEEDED = frozenset({"FAILED", "CANCELED"})


class StoredFile(Protocol):
    """What the package store knows of an uploaded file (``otaflow.packages.StoredPackage``)."""

    @property
    def size(self) -> int: ...

    @property
    def md5(self) -> str: ...

    @property
    def sha256(self) -> str: ...


def verification_status(target_count: int, outcomes: Mapping[str, str]) -> int:
    """A verifying package's status from its verification devices' task outcomes
    (device name -> terminal task status): the first device that does not succeed fails
    it; it is verified once every target device succeeded; until then it is verifying."""
    if any(status in _NOT_SUCCEEDED for status in outcomes.values()):
        return VERIFY_FAILED
    succeeded = sum(1 for status in outcomes.values() if status == "SUCCEEDED")
    if target_count > 0 and succeeded >= target_count:
        return VERIFIED
    return VERIFYING


def offered_files(firmware: Record) -> tuple[Record, ...]:
    """The files a device is offered: every file of a package of two or more (a package
    of one file, MultiFiles or not, is offered as a single file: url, size, sign)."""
    files = firmware.get("files") or []
    if len(files) < 2:
        return ()
    return tuple(dict(f, url=None) for f in files)


def begin_verification(firmware: Record, job_id: str, now: int) -> Record:
    """The package once its verification batch ``job_id`` is created (CreateOTAVerifyJob)."""
    if firmware["verify_status"] == VERIFIED:
        raise ApiError(E.FIRMWARE_ALREADY_VERIFIED, "The update package is already verified.")
    if firmware["verify_status"] == VERIFYING:
        raise ApiError(
            E.FIRMWARE_VERIFYING,
            "The update package is being verified; wait for its verification batch "
            f"{firmware.get('verify_job_id')} to end, or cancel it.",
        )
    return dict(
        firmware,
        verify_status=VERIFYING,
        verify_job_id=job_id,
        verify_outcomes={},
        updated_at=now,
    )


def firmware_status(record: Record) -> int:
    """QueryOTAFirmware Status: -1 no verification needed, 0 unverified, 1 verified,
    2 verifying, 3 verification failed."""
    if not record["need_to_verify"]:
        return -1
    return _STATUS_OF_VERIFY.get(record["verify_status"], 0)


def firmware_usable(record: Record) -> bool:
    return not record["need_to_verify"] or record["verify_status"] == VERIFIED


class FirmwareOps(OpsBase):
    file_path_of: Callable[[str], str]
    # The stored file at a package-store path, or None when nothing is stored there.
    # None as a whole: no package store attached (pure unit tests of other rules); the
    # caller's FirmwareSign and FirmwareSize are then taken as declared.
    stored_file: Callable[[str], StoredFile | None] | None

    # -- packages ---------------------------------------------------------------------

    def _CreateOTAFirmware(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        name = req_str(p, "FirmwareName")
        if not _FIRMWARE_NAME.match(name):
            raise invalid(
                "FirmwareName",
                "1-40 letters, digits, spaces, '.', '-', '_' or '()', starting alphanumeric",
            )
        dest = req_str(p, "DestVersion")
        if not _VERSION.match(dest):
            raise invalid("DestVersion", "1-64 letters, digits, '.', '-' or '_'")
        product_key = req_str(p, "ProductKey")
        fw_type = opt_int(p, "Type", 0)
        if fw_type not in (0, 1):
            raise invalid("Type", "must be 0 (full) or 1 (differential)")
        src = opt_str(p, "SrcVersion")
        if fw_type == 1 and not src:
            raise missing("SrcVersion")
        if src is not None and src == dest:
            raise invalid("SrcVersion", "must differ from DestVersion")
        sign_method = (opt_str(p, "SignMethod") or "MD5").upper()
        if sign_method not in ("MD5", "SHA256"):
            raise invalid("SignMethod", "must be MD5 or SHA256")
        module = opt_str(p, "ModuleName") or "default"
        if module != "default" and self.store.get(f"module/{product_key}/{module.lower()}") is None:
            raise ApiError(E.MODULE_NOT_FOUND, f"The OTA module {module} does not exist.")
        desc = opt_str(p, "FirmwareDesc")
        if desc is not None and len(desc) > 100:
            raise invalid("FirmwareDesc", "at most 100 characters")
        udi = opt_str(p, "Udi")
        if udi is not None and len(udi) > 4096:
            raise invalid("Udi", "at most 4096 characters")
        self._unique_firmware_name(product_key, name, None)
        url, sign, size, md5, files = self._package_file_facts(p, sign_method)
        file_path = self.file_path_of(url)
        firmware_id = derived_id(request_id, "firmware")
        record: Record = {
            "firmware_id": firmware_id,
            "product_key": product_key,
            "name": name,
            "module": module,
            "dest_version": dest,
            "src_version": src,
            "type": fw_type,
            "size": size,
            "sign": sign,
            "sign_method": sign_method,
            "md5": md5,
            "file_path": file_path,
            "url": url,
            "description": desc,
            "udi": udi,
            # The platform's default: a package must be verified before batch updates
            # unless the caller says NeedToVerify=false.
            "need_to_verify": opt_bool(p, "NeedToVerify", True),
            "verify_status": UNVERIFIED,
            "verify_job_id": None,
            "verify_outcomes": {},
            "files": files,
            "status": 1,
            "created_at": now,
            "updated_at": now,
        }
        return Outcome(
            data={"FirmwareId": firmware_id, "UtcCreate": utc(now)},
            writes={f"firmware/{firmware_id}": record},
        )

    def _package_file_facts(
        self, p: Mapping[str, Any], sign_method: str
    ) -> tuple[str, str, int, str | None, list[Record]]:
        """(url, sign, size, md5, files) of the package, from the stored file(s), which a
        declared sign or size must match (the platform: "if you do not configure this
        parameter, the MD5 value / size of the package in OSS is used")."""
        files = self._multi_files(p, sign_method)
        if not files:
            url = req_str(p, "FirmwareUrl")
            sign, size, md5 = self._checked_file(
                self.file_path_of(url),
                sign_method,
                declared_sign=opt_str(p, "FirmwareSign"),
                declared_size=opt_int(p, "FirmwareSize"),
                names=("FirmwareSign", "FirmwareSize", "FirmwareUrl"),
            )
            return url, sign, size, md5, []
        for single in ("FirmwareUrl", "FirmwareSign", "FirmwareSize"):
            if opt_str(p, single) is not None:
                raise invalid(single, "a package of several files gives it per MultiFiles.N")
        # The package's own fields describe its first file; devices get every file.
        first = files[0]
        return str(first["url"]), first["sign"], first["size"], first["md5"], files

    def _multi_files(self, p: Mapping[str, Any], sign_method: str) -> list[Record]:
        entries = opt_list(p, "MultiFiles")
        if len(entries) > MAX_FILES:
            raise invalid("MultiFiles", f"at most {MAX_FILES} files")
        files: list[Record] = []
        for n, entry in enumerate(entries, start=1):
            if not isinstance(entry, dict):
                raise invalid(f"MultiFiles.{n}", "must be sent as MultiFiles.N.Name, .Url, ...")
            name = opt_str(entry, "Name")
            if name is None or not 1 <= len(name) <= 32:
                raise invalid(f"MultiFiles.{n}.Name", "1-32 characters, required")
            if any(f["name"] == name for f in files):
                raise invalid(f"MultiFiles.{n}.Name", f"{name!r} is used twice")
            url = opt_str(entry, "Url")
            if url is None:
                raise missing(f"MultiFiles.{n}.Url")
            file_path = self.file_path_of(url)
            sign, size, md5 = self._checked_file(
                file_path,
                sign_method,
                declared_sign=opt_str(entry, "SignValue"),
                declared_size=opt_int(entry, "Size"),
                declared_md5=opt_str(entry, "FileMd5"),
                names=(f"MultiFiles.{n}.SignValue", f"MultiFiles.{n}.Size", f"MultiFiles.{n}.Url"),
            )
            files.append(
                {
                    "name": name,
                    "size": size,
                    "sign": sign,
                    "md5": md5,
                    "file_path": file_path,
                    "url": url,
                }
            )
        return files

    def _checked_file(
        self,
        file_path: str,
        sign_method: str,
        *,
        declared_sign: str | None,
        declared_size: int | None,
        names: tuple[str, str, str],
        declared_md5: str | None = None,
    ) -> tuple[str, int, str | None]:
        """(sign, size, md5) of one stored file; ``names``: the sign, size and URL
        parameters, for the errors."""
        sign_name, size_name, url_name = names
        if declared_size is not None and declared_size <= 0:
            raise invalid(size_name, "must be a positive number of bytes")
        if self.stored_file is None:
            if declared_sign is None:
                raise missing(sign_name)
            if declared_size is None:
                raise missing(size_name)
            md5 = declared_sign.lower() if sign_method == "MD5" else declared_md5
            return declared_sign.lower(), declared_size, md5
        stored = self.stored_file(file_path)
        if stored is None:
            raise ApiError(
                E.FIRMWARE_FILE_NOT_FOUND,
                f"No file is stored at {url_name}: upload it with the fields of "
                "GenerateOTAUploadURL first.",
            )
        if stored.size > MAX_PACKAGE_BYTES:
            raise ApiError(E.FIRMWARE_TOO_LARGE, "A package file may have at most 1,000 MB.")
        actual_sign = stored.md5 if sign_method == "MD5" else stored.sha256
        if declared_sign is not None and declared_sign.lower() != actual_sign:
            raise ApiError(
                E.FIRMWARE_SIGN_MISMATCH,
                f"{sign_name} is not the {sign_method} of the uploaded file.",
            )
        if declared_md5 is not None and declared_md5.lower() != stored.md5:
            raise ApiError(E.FIRMWARE_SIGN_MISMATCH, f"{names[0]} is not the uploaded file's MD5.")
        if declared_size is not None and declared_size != stored.size:
            raise ApiError(
                E.FIRMWARE_SIZE_MISMATCH,
                f"{size_name} {declared_size} is not the uploaded file's size {stored.size}.",
            )
        return actual_sign, stored.size, stored.md5

    def _unique_firmware_name(self, product_key: str, name: str, own_id: str | None) -> None:
        """Names are unique per product (the platform says per account; otaflow serves
        many teams' products from one deployment)."""
        for _, other in self.store.scan("firmware/"):
            if (
                other["name"] == name
                and other["product_key"] == product_key
                and other["firmware_id"] != own_id
            ):
                raise ApiError(E.FIRMWARE_NAME_EXISTS, f"An update package named {name} exists.")

    def _ModifyOTAFirmware(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        record = dict(self.firmware(req_str(p, "FirmwareId")))
        if record["product_key"] != req_str(p, "ProductKey"):
            raise ApiError(E.FIRMWARE_NOT_FOUND, "The specified firmware does not exist.")
        name = opt_str(p, "FirmwareName")
        if name is not None:
            if not _FIRMWARE_NAME.match(name):
                raise invalid("FirmwareName", "1-40 letters, digits, spaces, '.', '-', '_' or '()'")
            self._unique_firmware_name(record["product_key"], name, record["firmware_id"])
            record["name"] = name
        desc = opt_str(p, "FirmwareDesc")
        if desc is not None:
            if len(desc) > 100:
                raise invalid("FirmwareDesc", "at most 100 characters")
            record["description"] = desc
        udi = opt_str(p, "FirmwareUdi")
        if udi is not None:
            if len(udi) > 4096:
                raise invalid("FirmwareUdi", "at most 4096 characters")
            record["udi"] = udi
        record["updated_at"] = now
        return Outcome(writes={f"firmware/{record['firmware_id']}": record})

    def _firmware_info(self, record: Record) -> dict[str, Any]:
        return drop_none(
            {
                "FirmwareId": record["firmware_id"],
                "FirmwareName": record["name"],
                "FirmwareDesc": record["description"],
                "DestVersion": record["dest_version"],
                "SrcVersion": record["src_version"],
                "FirmwareSign": record["sign"],
                "FirmwareSize": record["size"],
                "FirmwareUrl": record["url"],
                "ModuleName": record["module"],
                "ProductKey": record["product_key"],
                "ProductName": self.product_name(record["product_key"]),
                "SignMethod": record["sign_method"],
                "Status": firmware_status(record),
                "Type": record["type"],
                "Udi": record["udi"],
                "MultiFiles": [
                    drop_none(
                        {
                            "Name": f["name"],
                            "Url": f["url"],
                            "Size": f["size"],
                            "SignValue": f["sign"],
                            "FileMd5": f["md5"],
                        }
                    )
                    for f in record.get("files") or []
                ]
                or None,
                "UtcCreate": utc(record["created_at"]),
                "UtcModified": utc(record["updated_at"]),
                "VerifyProgress": self._verify_progress(record),
            }
        )

    def _verify_progress(self, record: Record) -> int:
        """Percent of the verification batch's devices that succeeded."""
        if record["verify_status"] == VERIFIED:
            return 100
        job = self.store.get(f"job/{record.get('verify_job_id')}")
        if not job or not job.get("target_count"):
            return 0
        outcomes = record.get("verify_outcomes") or {}
        succeeded = sum(1 for status in outcomes.values() if status == "SUCCEEDED")
        return min(100, succeeded * 100 // int(job["target_count"]))

    def _RecordVerifyOutcome(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        """Internal (never reachable through the API): a verification device's task
        ended. Sent by ``otaflow.verification_feed`` from ``ota.task.events`` under a
        request id per task and status, so a replay changes nothing."""
        job_id = req_str(p, "JobId")
        device_name = req_str(p, "DeviceName")
        status = req_str(p, "TaskStatus")
        batch = self.store.get(f"batch/{job_id}")
        job = self.store.get(f"job/{job_id}")
        if batch is None or job is None:
            return read()
        firmware = self.store.get(f"firmware/{batch['firmware']['firmware_id']}")
        if (
            firmware is None
            or firmware.get("verify_job_id") != job_id
            or firmware["verify_status"] != VERIFYING
        ):
            return read()  # a verification already decided, or an older one's late event
        outcomes = dict(firmware.get("verify_outcomes") or {})
        outcomes[device_name] = status
        changed = dict(
            firmware,
            verify_outcomes=outcomes,
            verify_status=verification_status(int(job.get("target_count") or 0), outcomes),
            updated_at=now,
        )
        return Outcome(
            data={"VerifyStatus": changed["verify_status"]},
            writes={f"firmware/{firmware['firmware_id']}": changed},
        )

    def _QueryOTAFirmware(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        record = self.firmware(req_str(p, "FirmwareId"))
        return read(FirmwareInfo=self._firmware_info(record))

    def _ListOTAFirmware(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        paging = page(p, 100)
        product_key = opt_str(p, "ProductKey")
        dest = opt_str(p, "DestVersion")
        found = [
            r
            for _, r in self.store.scan("firmware/")
            if (product_key is None or r["product_key"] == product_key)
            and (dest is None or r["dest_version"] == dest)
        ]
        found.sort(key=lambda r: (-r["created_at"], r["firmware_id"]))
        rows = []
        for record in paging.slice(found):
            info = self._firmware_info(record)
            for extra in ("FirmwareUrl", "Udi", "VerifyProgress", "MultiFiles"):
                info.pop(extra, None)
            rows.append(info)
        return read(FirmwareInfo={"SimpleFirmwareInfo": rows}, **paging.top(len(found)))

    def _DeleteOTAFirmware(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        record = self.firmware(req_str(p, "FirmwareId"))
        for _, batch in self.store.scan("batch/"):
            if batch["firmware"]["firmware_id"] == record["firmware_id"] and job_status(
                batch, now
            ) in ("PLANNED", "IN_PROGRESS"):
                raise ApiError(
                    E.FIRMWARE_IN_USE,
                    f"The update package has a running batch ({batch['batch_id']}); cancel it "
                    "first.",
                )
        return Outcome(writes={f"firmware/{record['firmware_id']}": None})

    # -- modules ----------------------------------------------------------------------

    def _module_key(self, product_key: str, name: str) -> str:
        return f"module/{product_key}/{name.lower()}"

    def _CreateOTAModule(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        product_key = req_str(p, "ProductKey")
        self.product(product_key)
        name = req_str(p, "ModuleName")
        if not _MODULE_NAME.match(name):
            raise invalid("ModuleName", "1-64 letters, digits, '.', '-' or '_'")
        if name.lower() == "default" or self.store.get(self._module_key(product_key, name)):
            raise ApiError(E.MODULE_EXISTS, f"The OTA module {name} already exists.")
        existing = sum(1 for _ in self.store.scan(f"module/{product_key}/"))
        if existing >= MAX_MODULES_PER_PRODUCT:
            raise ApiError(
                E.MODULE_LIMIT, f"A product can have at most {MAX_MODULES_PER_PRODUCT} modules."
            )
        alias, desc = self._module_texts(p)
        record = {
            "product_key": product_key,
            "module_name": name,
            "alias": alias,
            "description": desc,
            "created_at": now,
            "updated_at": now,
        }
        return Outcome(writes={self._module_key(product_key, name): record})

    def _module_texts(self, p: Mapping[str, Any]) -> tuple[str | None, str | None]:
        alias = opt_str(p, "AliasName")
        if alias is not None and not _MODULE_NAME.match(alias):
            raise invalid("AliasName", "1-64 letters, digits, '.', '-' or '_'")
        desc = opt_str(p, "Desc")
        if desc is not None and len(desc) > 100:
            raise invalid("Desc", "at most 100 characters")
        return alias, desc

    def _existing_module(self, p: Mapping[str, Any]) -> tuple[str, Record]:
        product_key = req_str(p, "ProductKey")
        name = req_str(p, "ModuleName")
        if name.lower() == "default":
            raise ApiError(E.MODULE_DEFAULT, "The default module cannot be changed or deleted.")
        key = self._module_key(product_key, name)
        record = self.store.get(key)
        if record is None:
            raise ApiError(E.MODULE_NOT_FOUND, f"The OTA module {name} does not exist.")
        return key, record

    def _UpdateOTAModule(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        key, record = self._existing_module(p)
        alias, desc = self._module_texts(p)
        changed = dict(record, updated_at=now)
        if alias is not None:
            changed["alias"] = alias
        if desc is not None:
            changed["description"] = desc
        return Outcome(writes={key: changed})

    def _DeleteOTAModule(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        key, record = self._existing_module(p)
        for _, firmware in self.store.scan("firmware/"):
            if (
                firmware["product_key"] == record["product_key"]
                and firmware["module"].lower() == record["module_name"].lower()
            ):
                raise ApiError(
                    E.MODULE_IN_USE, "A module that has update packages cannot be deleted."
                )
        return Outcome(writes={key: None})

    def _ListOTAModuleByProduct(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        product_key = req_str(p, "ProductKey")
        product = self.product(product_key)
        rows = [
            {
                "ModuleName": "default",
                "AliasName": "default",
                "Desc": "The whole firmware of the device.",
                "ProductKey": product_key,
                "GmtCreate": gmt(product["created_at"]),
                "GmtModified": gmt(product["created_at"]),
            }
        ]
        for _, record in self.store.scan(f"module/{product_key}/"):
            rows.append(
                drop_none(
                    {
                        "ModuleName": record["module_name"],
                        "AliasName": record["alias"],
                        "Desc": record["description"],
                        "ProductKey": product_key,
                        "GmtCreate": gmt(record["created_at"]),
                        "GmtModified": gmt(record["updated_at"]),
                    }
                )
            )
        return read(rows)
