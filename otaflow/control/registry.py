"""The registry batch scopes need: products, devices (with their region) and groups.

Devices live in the control table (device/{pk}/{dn}); every change is also sent to
the device's partition as a ``DeviceRegistration`` so the device engine can match
regional and group scopes locally. Groups are broadcast as ``GroupControl``.

Region: the platform locates devices by their IP address; otaflow takes the region
from the registry instead, as two extra parameters ``Province`` and ``City`` of
RegisterDevice and of each ``DeviceNameList.N`` entry of BatchCheckDeviceNames.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from otaflow.control import errors as E
from otaflow.control.common import (
    DeviceItem,
    OpsBase,
    Outcome,
    Record,
    drop_none,
    gmt,
    opt_int,
    opt_list,
    opt_str,
    page,
    read,
    req_str,
    str_list,
    utc,
)
from otaflow.control.errors import ApiError, invalid, missing
from otaflow.control.ids import derived_id
from otaflow.domain.devices import DeviceState
from otaflow.domain.groups import (
    MODULE_FIELDS,
    GroupExpressionError,
    check_expression,
    compile_node,
    parse_expression,
    pinned_products,
)
from otaflow.edge.credentials import device_secret

DEVICE_NAME = re.compile(r"^[A-Za-z0-9_\-@.:]{4,32}$")
_PRODUCT_NAME = re.compile(r"^[\w\u4e00-\u9fa5]{4,30}$")
_GROUP_NAME = re.compile(r"^[\w\u4e00-\u9fa5]{4,30}$")
MAX_GROUPS_PER_DEVICE = 10
MAX_GROUP_DEPTH = 3
MAX_DEVICES_PER_RELATION_CALL = 200
MAX_NAMES_PER_APPLY = 10_000
GROUP_TYPES = {"LINK_PLATFORM": "STATIC", "LINK_PLATFORM_DYNAMIC": "DYNAMIC"}
API_GROUP_TYPE = {v: k for k, v in GROUP_TYPES.items()}


def _checked_expression(p: Mapping[str, Any]) -> str:
    """A DynamicGroupExpression otaflow can evaluate, or the refusal with its position."""
    expression = req_str(p, "DynamicGroupExpression")
    if len(expression) > 2048:
        raise invalid("DynamicGroupExpression", "at most 2048 characters")
    try:
        check_expression(expression)
    except GroupExpressionError as exc:
        raise ApiError(
            E.GROUP_EXPRESSION, f"The DynamicGroupExpression is not supported: {exc}."
        ) from None
    return expression


def iot_id(product_key: str, device_name: str) -> str:
    """A device's IotId: derived from its key, so every reader can compute it."""
    return derived_id(f"{product_key}/{device_name}", "iotid", 20)


def device_registration(record: Record, action: str, now: int) -> DeviceItem:
    return DeviceItem(
        record["product_key"],
        record["device_name"],
        "DeviceRegistration",
        {
            "product_key": record["product_key"],
            "device_name": record["device_name"],
            "action": action,
            "province": record["province"],
            "city": record["city"],
            "groups": list(record["groups"]),
            "event_time": now,
        },
    )


def _group_control(group: Record, deleted: bool, now: int) -> Record:
    """The GroupControl every device partition gets for a group's change."""
    return {
        "group_id": group["group_id"],
        "group_type": group["group_type"],
        "name": group["name"],
        "parent_id": group["parent_id"],
        "expression": group["expression"],
        "deleted": deleted,
        "event_time": now,
    }


def _secret(request_id: str, salt: str) -> str:
    return hashlib.sha256(f"{salt}|{request_id}".encode()).hexdigest()[:32]


def _apply_id(request_id: str) -> int:
    digest = hashlib.sha256(f"apply|{request_id}".encode()).hexdigest()
    return int(digest, 16) % 10**12 + 1


class RegistryOps(OpsBase):
    # The deployment's server key: a DeviceSecret is derived from it and the device's
    # name, so the broker's auth plugin checks devices without a database
    # (otaflow.edge.credentials).
    device_key: str

    # -- products ---------------------------------------------------------------------

    def _CreateProduct(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        name = req_str(p, "ProductName")
        if not _PRODUCT_NAME.match(name):
            raise invalid("ProductName", "4-30 letters, digits or '_'")
        node_type = opt_int(p, "NodeType")
        if node_type is None:
            raise missing("NodeType")
        if node_type not in (0, 1):
            raise invalid("NodeType", "must be 0 (device) or 1 (gateway)")
        for _, other in self.store.scan("product/"):
            if other["name"] == name:
                raise ApiError(E.PRODUCT_NAME_EXISTS, f"A product named {name} already exists.")
        desc = opt_str(p, "Description")
        if desc is not None and len(desc) > 100:
            raise invalid("Description", "at most 100 characters")
        product_key = "a1" + derived_id(request_id, "product", 9)
        record = {
            "product_key": product_key,
            "name": name,
            "node_type": node_type,
            "auth_type": opt_str(p, "AuthType") or "secret",
            "commodity_code": opt_str(p, "AliyunCommodityCode") or "iothub",
            "data_format": opt_int(p, "DataFormat"),
            "description": desc,
            "product_secret": _secret(request_id, "product-secret"),
            "created_at": now,
        }
        data = drop_none(
            {
                "ProductKey": product_key,
                "ProductName": name,
                "NodeType": node_type,
                "AuthType": record["auth_type"],
                "AliyunCommodityCode": record["commodity_code"],
                "DataFormat": record["data_format"],
                "Description": desc,
                "ProductSecret": record["product_secret"],
                "Id2": False,
            }
        )
        return Outcome(
            data=data, writes={f"product/{product_key}": record}, top={"ProductKey": product_key}
        )

    def _QueryProduct(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        record = self.product(req_str(p, "ProductKey"))
        count = sum(1 for _ in self.store.scan(f"device/{record['product_key']}/"))
        return read(
            drop_none(
                {
                    "ProductKey": record["product_key"],
                    "ProductName": record["name"],
                    "NodeType": record["node_type"],
                    "AuthType": record["auth_type"],
                    "AliyunCommodityCode": record["commodity_code"],
                    "DataFormat": record["data_format"],
                    "Description": record["description"],
                    "ProductSecret": record["product_secret"],
                    "DeviceCount": count,
                    "GmtCreate": record["created_at"],
                    "Id2": False,
                    "Owner": True,
                    "ProductStatus": "DEVELOPMENT_STATUS",
                }
            )
        )

    # -- devices ----------------------------------------------------------------------

    def _new_device(
        self,
        product_key: str,
        name: str,
        request_id: str,
        now: int,
        nickname: str | None,
        province: str | None,
        city: str | None,
    ) -> tuple[dict[str, Record | None], Record]:
        device_id = iot_id(product_key, name)
        record: Record = {
            "product_key": product_key,
            "device_name": name,
            "iot_id": device_id,
            "device_secret": device_secret(self.device_key, product_key, name),
            "nickname": nickname,
            "province": province,
            "city": city,
            "groups": [],
            "created_at": now,
        }
        writes: dict[str, Record | None] = {
            f"device/{product_key}/{name}": record,
            f"iotid/{device_id}": {"items": [product_key, name]},
        }
        return writes, record

    def _region(self, p: Mapping[str, Any]) -> tuple[str | None, str | None]:
        province, city = opt_str(p, "Province"), opt_str(p, "City")
        if city is not None and province is None:
            raise invalid("City", "needs Province")
        return province, city

    def _RegisterDevice(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        product_key = req_str(p, "ProductKey")
        self.product(product_key)
        name = opt_str(p, "DeviceName") or derived_id(request_id, "device-name", 20)
        if not DEVICE_NAME.match(name):
            raise ApiError(
                E.DEVICE_NAME_INVALID,
                f"DeviceName {name!r} must be 4-32 letters, digits or - _ @ . :",
            )
        if self.store.get(f"device/{product_key}/{name}") is not None:
            raise ApiError(E.DEVICE_EXISTS, f"The device {name} already exists.")
        nickname = opt_str(p, "Nickname")
        province, city = self._region(p)
        writes, record = self._new_device(
            product_key, name, request_id, now, nickname, province, city
        )
        data = drop_none(
            {
                "ProductKey": product_key,
                "DeviceName": name,
                "DeviceSecret": record["device_secret"],
                "IotId": record["iot_id"],
                "Nickname": nickname,
            }
        )
        return Outcome(
            data=data,
            writes=writes,
            device_items=[device_registration(record, "REGISTER", now)],
        )

    def _QueryDeviceDetail(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        record = self.device_of(p)
        return read(
            drop_none(
                {
                    "ProductKey": record["product_key"],
                    "ProductName": self.product_name(record["product_key"]),
                    "DeviceName": record["device_name"],
                    # Derived, not the stored copy: what the broker checks, also for a
                    # device registered before secrets were derived.
                    "DeviceSecret": device_secret(
                        self.device_key, record["product_key"], record["device_name"]
                    ),
                    "IotId": record["iot_id"],
                    "Nickname": record["nickname"],
                    "NodeType": 0,
                    "Owner": True,
                    "Status": "UNACTIVE",
                    "GmtCreate": gmt(record["created_at"]),
                    "UtcCreate": utc(record["created_at"]),
                    # otaflow's extras: the registry's region and static groups.
                    "Province": record["province"],
                    "City": record["city"],
                    "GroupIds": list(record["groups"]),
                }
            )
        )

    def _DeleteDevice(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        """Removes the device from the registry and from matching: its partition drops
        its state and cancels its unfinished tasks (desc ``device deleted``); finished
        tasks stay readable. The broker refuses it from then on (its name leaves the
        broker's device list, otaflow.edge.registry_sync)."""
        record = self.device_of(p)
        product_key, name = record["product_key"], record["device_name"]
        writes: dict[str, Record | None] = {
            f"device/{product_key}/{name}": None,
            f"iotid/{record['iot_id']}": None,
        }
        for gid in record["groups"]:
            group = self.store.get(f"group/{gid}")
            if group is not None:
                writes[f"group/{gid}"] = dict(group, device_count=max(0, group["device_count"] - 1))
        return Outcome(writes=writes, device_items=[device_registration(record, "DELETE", now)])

    # -- bulk registration ----------------------------------------------------------------

    def _BatchCheckDeviceNames(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        product_key = req_str(p, "ProductKey")
        self.product(product_key)
        entries: list[tuple[str, str | None, str | None, str | None]] = []
        for name in str_list(p, "DeviceName"):
            entries.append((name, None, None, None))
        for item in opt_list(p, "DeviceNameList"):
            if not isinstance(item, dict) or not item.get("DeviceName"):
                raise invalid("DeviceNameList", "each entry needs a DeviceName")
            entries.append(
                (
                    item["DeviceName"],
                    item.get("DeviceNickname"),
                    item.get("Province"),
                    item.get("City"),
                )
            )
        if not entries:
            raise missing("DeviceName")
        if len(entries) > MAX_NAMES_PER_APPLY:
            raise invalid("DeviceName", f"at most {MAX_NAMES_PER_APPLY:,} names per call")
        seen: set[str] = set()
        repeated: list[str] = []
        invalid_names: list[str] = []
        reasons: list[str] = []
        valid: list[tuple[str, str | None, str | None, str | None]] = []
        for entry in entries:
            name = entry[0]
            if name in seen:
                repeated.append(name)
                continue
            seen.add(name)
            if not DEVICE_NAME.match(name):
                invalid_names.append(name)
                reasons.append("DeviceName must be 4-32 letters, digits or - _ @ . :")
            elif self.store.get(f"device/{product_key}/{name}") is not None:
                invalid_names.append(name)
                reasons.append("The device already exists.")
            else:
                valid.append(entry)
        apply_id = _apply_id(request_id)
        record = {
            "apply_id": apply_id,
            "product_key": product_key,
            "status": "CHECK_SUCCESS" if valid else "CHECK_FAILED",
            "names": [e[0] for e in valid],
            "nicknames": [e[1] for e in valid],
            "provinces": [e[2] for e in valid],
            "cities": [e[3] for e in valid],
            "invalid_names": invalid_names,
            "invalid_reasons": reasons,
            "created_at": now,
        }
        data = {
            "ApplyId": apply_id,
            "InvalidDeviceNameList": {"InvalidDeviceName": invalid_names},
            "InvalidDetailList": {
                "InvalidDetailList": [
                    {"DeviceName": n, "ErrorMsg": r}
                    for n, r in zip(invalid_names, reasons, strict=True)
                ]
            },
            "RepeatedDeviceNameList": {"RepeatDevieNameList": repeated},
        }
        return Outcome(data=data, writes={f"apply/{apply_id}": record})

    def _apply(self, p: Mapping[str, Any]) -> Record:
        apply_id = opt_int(p, "ApplyId")
        if apply_id is None:
            raise missing("ApplyId")
        record = self.store.get(f"apply/{apply_id}")
        if record is None or record["product_key"] != req_str(p, "ProductKey"):
            raise ApiError(E.APPLY_NOT_FOUND, f"The application {apply_id} does not exist.")
        return record

    def _BatchRegisterDeviceWithApplyId(
        self, p: Mapping[str, Any], request_id: str, now: int
    ) -> Outcome:
        apply = self._apply(p)
        if apply["status"] != "CHECK_SUCCESS":
            raise ApiError(
                E.APPLY_STATE, f"The application is {apply['status']}; it cannot be registered."
            )
        return self._register_apply(apply, now)

    def _BatchRegisterDevice(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        """Count devices with random names, under an ApplyId (QueryPageByApplyId lists them).

        otaflow registers them at once (the platform does it asynchronously; its status
        reads then say CREATE_SUCCESS straight away)."""
        product_key = req_str(p, "ProductKey")
        self.product(product_key)
        count = opt_int(p, "Count")
        if count is None:
            raise missing("Count")
        if not 1 <= count <= MAX_NAMES_PER_APPLY:
            raise invalid("Count", f"must be from 1 to {MAX_NAMES_PER_APPLY:,}")
        names = [derived_id(f"{request_id}|{i}", "device-name", 20) for i in range(count)]
        apply = {
            "apply_id": _apply_id(request_id),
            "product_key": product_key,
            "status": "CHECK_SUCCESS",
            "names": names,
            "nicknames": [None] * count,
            "provinces": [None] * count,
            "cities": [None] * count,
            "invalid_names": [],
            "invalid_reasons": [],
            "created_at": now,
        }
        return self._register_apply(apply, now)

    def _register_apply(self, apply: Record, now: int) -> Outcome:
        outcome = Outcome(data={"ApplyId": apply["apply_id"]})
        failed: list[str] = []
        for i, name in enumerate(apply["names"]):
            if self.store.get(f"device/{apply['product_key']}/{name}") is not None:
                failed.append(name)  # registered by another call since the check
                continue
            writes, record = self._new_device(
                apply["product_key"],
                name,
                f"{apply['apply_id']}",
                now,
                apply["nicknames"][i],
                apply["provinces"][i],
                apply["cities"][i],
            )
            outcome.writes.update(writes)
            outcome.device_items.append(device_registration(record, "REGISTER", now))
        outcome.writes[f"apply/{apply['apply_id']}"] = dict(
            apply,
            status="CREATE_FAILED" if failed else "CREATE_SUCCESS",
            invalid_names=apply["invalid_names"] + failed,
            invalid_reasons=apply["invalid_reasons"] + ["The device already exists."] * len(failed),
        )
        return outcome

    def _QueryBatchRegisterDeviceStatus(
        self, p: Mapping[str, Any], request_id: str, now: int
    ) -> Outcome:
        apply = self._apply(p)
        invalid_set = set(apply["invalid_names"])
        return read(
            {
                "Status": apply["status"],
                "ValidList": {"Name": [n for n in apply["names"] if n not in invalid_set]},
                "InvalidList": {"Name": list(apply["invalid_names"])},
            }
        )

    def _QueryPageByApplyId(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        apply_id = opt_int(p, "ApplyId")
        if apply_id is None:
            raise missing("ApplyId")
        apply = self.store.get(f"apply/{apply_id}")
        if apply is None:
            raise ApiError(E.APPLY_NOT_FOUND, f"The application {apply_id} does not exist.")
        paging = page(p, 50)
        devices = []
        if apply["status"].startswith("CREATE"):
            for name in apply["names"]:
                record = self.store.get(f"device/{apply['product_key']}/{name}")
                if record is not None:
                    devices.append(record)
        rows = [
            {
                "DeviceName": r["device_name"],
                "DeviceSecret": device_secret(self.device_key, r["product_key"], r["device_name"]),
                "IotId": r["iot_id"],
            }
            for r in paging.slice(devices)
        ]
        top = paging.top(len(devices))
        top["Page"] = top.pop("CurrentPage")
        return read(ApplyDeviceList={"ApplyDeviceInfo": rows}, **top)

    # -- groups -----------------------------------------------------------------------

    def _group_name(self, p: Mapping[str, Any], parent: str | None, kind: str) -> str:
        name = req_str(p, "GroupName")
        if not _GROUP_NAME.match(name):
            raise invalid("GroupName", "4-30 letters, digits or '_'")
        for _, other in self.store.scan("group/"):
            if (
                other["name"] == name
                and other["parent_id"] == parent
                and other["group_type"] == kind
            ):
                raise ApiError(E.GROUP_NAME_EXISTS, f"A group named {name} already exists.")
        return name

    def _group_data(self, record: Record) -> dict[str, Any]:
        return drop_none(
            {
                "GroupId": record["group_id"],
                "GroupName": record["name"],
                "GroupDesc": record["description"],
                "DynamicGroupExpression": record["expression"],
                "UtcCreate": utc(record["created_at"]),
            }
        )

    def _group_desc(self, p: Mapping[str, Any]) -> str | None:
        desc = opt_str(p, "GroupDesc")
        if desc is not None and len(desc) > 100:
            raise invalid("GroupDesc", "at most 100 characters")
        return desc

    def _CreateDeviceGroup(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        parent_id = opt_str(p, "SuperGroupId")
        if parent_id is not None:
            parent = self.group(parent_id)
            if parent["group_type"] != "STATIC":
                raise ApiError(E.GROUP_TYPE, "A dynamic group cannot have subgroups.")
            depth = 1
            while parent["parent_id"] is not None:
                depth += 1
                parent = self.group(parent["parent_id"])
            if depth >= MAX_GROUP_DEPTH:
                raise ApiError(E.GROUP_DEPTH, f"Groups nest at most {MAX_GROUP_DEPTH} levels deep.")
        name = self._group_name(p, parent_id, "STATIC")
        return self._new_group(
            request_id, now, name, "STATIC", self._group_desc(p), parent_id, None
        )

    def _CreateDeviceDynamicGroup(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        expression = _checked_expression(p)
        name = self._group_name(p, None, "DYNAMIC")
        return self._new_group(
            request_id, now, name, "DYNAMIC", self._group_desc(p), None, expression
        )

    def _new_group(
        self,
        request_id: str,
        now: int,
        name: str,
        kind: str,
        desc: str | None,
        parent_id: str | None,
        expression: str | None,
    ) -> Outcome:
        group_id = derived_id(request_id, "group", 16)
        record = {
            "group_id": group_id,
            "group_type": kind,
            "name": name,
            "description": desc,
            "parent_id": parent_id,
            "expression": expression,
            "device_count": 0,
            "created_at": now,
        }
        control = _group_control(record, False, now)
        return Outcome(
            data=self._group_data(record),
            writes={f"group/{group_id}": record},
            broadcasts=[("GroupControl", control)],
        )

    def _group_of_type(self, p: Mapping[str, Any], default: str = "LINK_PLATFORM") -> Record:
        group = self.group(req_str(p, "GroupId"))
        asked = opt_str(p, "GroupType") or default
        if asked not in GROUP_TYPES:
            raise invalid("GroupType", "LINK_PLATFORM or LINK_PLATFORM_DYNAMIC")
        if opt_str(p, "GroupType") is not None and GROUP_TYPES[asked] != group["group_type"]:
            raise ApiError(
                E.GROUP_TYPE, f"The group is {API_GROUP_TYPE[group['group_type']]}, not {asked}."
            )
        return group

    def _group_members(self, group: Record) -> int | None:
        """How many registered devices are in the group now (None: not known here).

        Static: devices directly in it. Dynamic: registered devices whose registry data
        (product, name, region, static groups) match the expression. Module versions
        are reported to the device partitions, never to the registry, so a group that
        tests ``ota_module`` cannot be counted here: None (DeviceCount left out).
        """
        if group["group_type"] == "STATIC":
            return int(group["device_count"])
        expression = group["expression"] or ""
        if any(f in expression.lower() for f in MODULE_FIELDS):
            return None
        node = parse_expression(expression)
        matches = compile_node(node)
        products = pinned_products(node)
        prefixes = sorted(f"device/{pk}/" for pk in products) if products else ["device/"]
        count = 0
        for prefix in prefixes:
            for _, device in self.store.scan(prefix):
                state = DeviceState(device["product_key"], device["device_name"])
                state.province, state.city = device["province"], device["city"]
                state.groups = list(device["groups"])
                count += matches(state)
        return count

    def _QueryDeviceGroupInfo(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        group = self._group_of_type(p)
        data = self._group_data(group)
        data.update(
            drop_none(
                {
                    "DeviceCount": self._group_members(group),
                    "DeviceActive": 0,
                    "DeviceOnline": 0,
                    # otaflow's extras: what kind of group, and its parent.
                    "GroupType": API_GROUP_TYPE[group["group_type"]],
                    "SuperGroupId": group["parent_id"],
                }
            )
        )
        return read(data)

    def _UpdateDeviceGroup(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        """GroupDesc; for a dynamic group also (otaflow's extra) DynamicGroupExpression,
        checked like CreateDeviceDynamicGroup's. Devices join or leave by it at once."""
        group = self._group_of_type(p)
        desc = self._group_desc(p)
        changed = dict(group, description=desc if desc is not None else group["description"])
        broadcasts: list[tuple[str, Record]] = []
        if opt_str(p, "DynamicGroupExpression") is not None:
            if group["group_type"] != "DYNAMIC":
                raise ApiError(E.GROUP_TYPE, "Only a dynamic group has an expression.")
            changed["expression"] = _checked_expression(p)
            broadcasts.append(("GroupControl", _group_control(changed, False, now)))
        return Outcome(writes={f"group/{group['group_id']}": changed}, broadcasts=broadcasts)

    def _DeleteDeviceGroup(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        """A static group (no subgroups left) or, as DeleteDeviceDynamicGroup, a dynamic one.

        Its batches and their tasks stay; a deleted dynamic group matches no device from
        now on, a deleted static group's devices leave it."""
        group = self.group(req_str(p, "GroupId"))
        gid = group["group_id"]
        outcome = Outcome(writes={f"group/{gid}": None})
        if group["group_type"] == "STATIC":
            for _, child in self.store.scan("group/"):
                if child["parent_id"] == gid:
                    raise ApiError(
                        E.GROUP_HAS_SUBGROUP,
                        f"The group has subgroups ({child['group_id']}); delete them first.",
                    )
            if group["device_count"] > 0:
                for key, device in self.store.scan("device/"):
                    if gid in device["groups"]:
                        left = dict(device, groups=[g for g in device["groups"] if g != gid])
                        outcome.writes[key] = left
                        outcome.device_items.append(device_registration(left, "UPDATE", now))
        outcome.broadcasts.append(("GroupControl", _group_control(group, True, now)))
        return outcome

    def _DeleteDeviceDynamicGroup(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        group = self.group(req_str(p, "GroupId"))
        if group["group_type"] != "DYNAMIC":
            raise ApiError(E.GROUP_TYPE, "The group is a static group (use DeleteDeviceGroup).")
        return self._DeleteDeviceGroup(p, request_id, now)

    def _QueryDeviceGroupList(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        paging = page(p, 200)
        types = str_list(p, "GroupTypes") or ["LINK_PLATFORM"]
        kinds = set()
        for t in types:
            if t not in GROUP_TYPES:
                raise invalid("GroupTypes", "LINK_PLATFORM or LINK_PLATFORM_DYNAMIC")
            kinds.add(GROUP_TYPES[t])
        parent = opt_str(p, "SuperGroupId")
        name = opt_str(p, "GroupName")
        found = [
            r
            for _, r in self.store.scan("group/")
            if r["group_type"] in kinds
            and (parent is None or r["parent_id"] == parent)
            and (name is None or name in r["name"])
        ]
        found.sort(key=lambda r: (-r["created_at"], r["group_id"]))
        rows = [
            drop_none(
                {
                    "GroupId": r["group_id"],
                    "GroupName": r["name"],
                    "GroupDesc": r["description"],
                    "GroupType": API_GROUP_TYPE[r["group_type"]],
                    "UtcCreate": utc(r["created_at"]),
                }
            )
            for r in paging.slice(found)
        ]
        return read({"GroupInfo": rows}, **paging.top(len(found)))

    def _relation_devices(self, p: Mapping[str, Any]) -> list[tuple[str, str]]:
        items = opt_list(p, "Device")
        if not items:
            raise missing("Device")
        if len(items) > MAX_DEVICES_PER_RELATION_CALL:
            raise ApiError(
                E.GROUP_DEVICE_LIMIT,
                f"At most {MAX_DEVICES_PER_RELATION_CALL} devices per call, got {len(items)}.",
            )
        out = []
        for item in items:
            if (
                not isinstance(item, dict)
                or not item.get("DeviceName")
                or not item.get("ProductKey")
            ):
                raise invalid("Device", "each entry needs ProductKey and DeviceName")
            out.append((item["ProductKey"], item["DeviceName"]))
        return list(dict.fromkeys(out))

    def _static_group(self, p: Mapping[str, Any]) -> Record:
        group = self.group(req_str(p, "GroupId"))
        if group["group_type"] != "STATIC":
            raise ApiError(E.GROUP_TYPE, "Devices join a dynamic group by its expression only.")
        return group

    def _BatchAddDeviceGroupRelations(
        self, p: Mapping[str, Any], request_id: str, now: int
    ) -> Outcome:
        group = self._static_group(p)
        gid = group["group_id"]
        outcome = Outcome()
        valid = already = exceeded = added = 0
        for product_key, name in self._relation_devices(p):
            record = self.store.get(f"device/{product_key}/{name}")
            if record is None:
                continue
            valid += 1
            if gid in record["groups"]:
                already += 1
                continue
            if len(record["groups"]) >= MAX_GROUPS_PER_DEVICE:
                exceeded += 1
                continue
            changed = dict(record, groups=[*record["groups"], gid])
            outcome.writes[f"device/{product_key}/{name}"] = changed
            outcome.device_items.append(device_registration(changed, "UPDATE", now))
            added += 1
        if added:
            outcome.writes[f"group/{gid}"] = dict(group, device_count=group["device_count"] + added)
        outcome.top = {
            "ValidDeviceCount": valid,
            "AlreadyRelatedGroupDeviceCount": already,
            "ExceedTenGroupDeviceCount": exceeded,
            "SuccessAddedDeviceCount": added,
        }
        return outcome

    def _BatchDeleteDeviceGroupRelations(
        self, p: Mapping[str, Any], request_id: str, now: int
    ) -> Outcome:
        group = self._static_group(p)
        gid = group["group_id"]
        outcome = Outcome()
        valid = related = removed = 0
        for product_key, name in self._relation_devices(p):
            record = self.store.get(f"device/{product_key}/{name}")
            if record is None:
                continue
            valid += 1
            if gid not in record["groups"]:
                continue
            related += 1
            changed = dict(record, groups=[g for g in record["groups"] if g != gid])
            outcome.writes[f"device/{product_key}/{name}"] = changed
            outcome.device_items.append(device_registration(changed, "UPDATE", now))
            removed += 1
        if removed:
            outcome.writes[f"group/{gid}"] = dict(
                group, device_count=max(0, group["device_count"] - removed)
            )
        outcome.top = {
            "ValidDeviceCount": valid,
            "AlreadyRelatedGroupDeviceCount": related,
            "SuccessDeviceCount": removed,
        }
        return outcome
