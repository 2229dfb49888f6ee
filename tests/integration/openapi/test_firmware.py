"""The OTA OpenAPI's firmware (package) and module operations, through the official SDK.

Shared deployment (``conftest.py``, one for the package) and helpers:
``tests/integration/api_support.py``.
"""

from __future__ import annotations

import pytest
from alibabacloud_iot20180120 import models as m

from tests.integration.api_support import (
    Deployment,
    new_product,
    ok,
    refused,
    upload_firmware,
)
from tests.integration.uploads import post_object

pytestmark = pytest.mark.integration


def test_firmware_and_modules(api: Deployment) -> None:
    c = api.client
    pk = new_product(api)
    url = ok(c.generate_otaupload_url(m.GenerateOTAUploadURLRequest(file_suffix="zip")).body).data
    assert url.key.endswith(".zip") and url.firmware_url.endswith(url.key)
    assert url.object_storage == "OTAFLOW" and url.utc_create.endswith("Z")
    refused(
        c.generate_otaupload_url(m.GenerateOTAUploadURLRequest(file_suffix="exe")).body,
        "iot.common.InvalidFormattedParameter",
        "FileSuffix",
    )
    # A forged upload signature is refused.
    bad = post_object(dict(url.to_map(), Signature="A" * 44), b"x")
    assert bad.status_code == 403

    ok(
        c.create_otamodule(
            m.CreateOTAModuleRequest(
                product_key=pk, module_name="mcu", alias_name="m1", desc="the MCU"
            )
        ).body
    )
    refused(
        c.create_otamodule(m.CreateOTAModuleRequest(product_key=pk, module_name="MCU")).body,
        "iot.ota.ModuleAlreadyExist",
    )
    ok(
        c.update_otamodule(
            m.UpdateOTAModuleRequest(product_key=pk, module_name="mcu", alias_name="m2")
        ).body
    )
    modules = ok(
        c.list_otamodule_by_product(m.ListOTAModuleByProductRequest(product_key=pk)).body
    ).data
    assert {(x.module_name, x.alias_name) for x in modules} == {
        ("default", "default"),
        ("mcu", "m2"),
    }

    firmware_id = upload_firmware(api, pk, "3.1", module_name="mcu", firmware_desc="first")
    info = ok(
        c.query_otafirmware(m.QueryOTAFirmwareRequest(firmware_id=firmware_id)).body
    ).firmware_info
    assert (info.module_name, info.dest_version, info.firmware_desc, info.product_key) == (
        "mcu",
        "3.1",
        "first",
        pk,
    )
    assert info.sign_method == "MD5" and info.firmware_size > 0 and info.type == 0
    refused(
        c.create_otafirmware(
            m.CreateOTAFirmwareRequest(
                product_key=pk,
                firmware_name=info.firmware_name,
                dest_version="3.2",
                firmware_url=info.firmware_url,
                firmware_sign="x",
                firmware_size=1,
            )
        ).body,
        "iot.ota.FirmwareNameAlreadyExist",
    )
    refused(
        c.create_otafirmware(
            m.CreateOTAFirmwareRequest(
                product_key=pk,
                firmware_name="fw_nomodule",
                dest_version="3.2",
                firmware_url=info.firmware_url,
                firmware_sign="x",
                module_name="nope",
            )
        ).body,
        "iot.ota.ModuleNotExist",
    )
    ok(
        c.modify_otafirmware(
            m.ModifyOTAFirmwareRequest(
                product_key=pk,
                firmware_id=firmware_id,
                firmware_name="renamed_" + firmware_id[:8],
                firmware_desc="second",
            )
        ).body
    )
    listed = ok(
        c.list_otafirmware(
            m.ListOTAFirmwareRequest(product_key=pk, current_page=1, page_size=10)
        ).body
    )
    assert listed.total == 1
    row = listed.firmware_info.simple_firmware_info[0]
    assert (row.firmware_id, row.firmware_name, row.firmware_desc) == (
        firmware_id,
        "renamed_" + firmware_id[:8],
        "second",
    )
    refused(
        c.delete_otamodule(m.DeleteOTAModuleRequest(product_key=pk, module_name="mcu")).body,
        "iot.ota.ModuleHasFirmware",
    )
    ok(c.delete_otafirmware(m.DeleteOTAFirmwareRequest(firmware_id=firmware_id)).body)
    refused(
        c.query_otafirmware(m.QueryOTAFirmwareRequest(firmware_id=firmware_id)).body,
        "iot.ota.FirmwareNotFound",
    )
    ok(c.delete_otamodule(m.DeleteOTAModuleRequest(product_key=pk, module_name="mcu")).body)
    modules = ok(
        c.list_otamodule_by_product(m.ListOTAModuleByProductRequest(product_key=pk)).body
    ).data
    assert [x.module_name for x in modules] == ["default"]
