"""The OpenAPI's registry through the official SDK: products, devices and groups.

Shared deployment (``conftest.py``, one for the package) and helpers:
``tests/integration/api_support.py``.
"""

from __future__ import annotations

import pytest
from alibabacloud_iot20180120 import models as m

from otaflow.device_keys import device_key
from otaflow.kafka_partitions import partition_for
from tests.integration.api_support import (
    Deployment,
    eventually,
    new_product,
    ok,
    refused,
    register,
    report_versions,
    wait_items,
)

pytestmark = pytest.mark.integration


def test_registry_products_devices_and_groups(api: Deployment) -> None:
    c = api.client
    pk = new_product(api)
    product = ok(c.query_product(m.QueryProductRequest(product_key=pk)).body).data
    assert product.product_key == pk and product.device_count == 0 and product.node_type == 0
    refused(
        c.create_product(
            m.CreateProductRequest(product_name=product.product_name, node_type=0)
        ).body,
        "iot.prod.AlreadyExistedProductName",
    )
    register(api, pk, "north01", province="Zhejiang")
    refused(
        c.register_device(m.RegisterDeviceRequest(product_key=pk, device_name="north01")).body,
        "iot.device.DeviceNameAlreadyExist",
    )
    refused(
        c.register_device(m.RegisterDeviceRequest(product_key=pk, device_name="no")).body,
        "iot.device.InvalidFormattedDeviceName",
    )
    detail = ok(
        c.query_device_detail(
            m.QueryDeviceDetailRequest(product_key=pk, device_name="north01")
        ).body
    ).data
    raw = api.call_raw("QueryDeviceDetail", {"IotId": detail.iot_id})
    assert raw["Data"]["Province"] == "Zhejiang" and raw["Data"]["City"] == "Hangzhou"
    regs = wait_items(
        api, "DeviceRegistration", lambda v: any(r["device_name"] == "north01" for r in v)
    )
    partition, reg = next((p, r) for p, r in regs if r["device_name"] == "north01")
    assert reg["province"] == "Zhejiang" and reg["action"] == "REGISTER"
    assert partition == partition_for(device_key(pk, "north01").encode(), api.settings.partitions)

    report_versions(api, pk, "1.7", "north01")
    detail = eventually(
        lambda: c.query_device_detail(m.QueryDeviceDetailRequest(iot_id=detail.iot_id)).body.data,
        lambda d: d.firmware_version == "1.7",
    )
    versions = ok(
        c.list_otamodule_versions_by_device(
            m.ListOTAModuleVersionsByDeviceRequest(
                product_key=pk, device_name="north01", current_page=1, page_size=10
            )
        ).body
    )
    assert [(v.module_name, v.module_version) for v in versions.data.simple_otamodule_info] == [
        ("default", "1.7")
    ]

    # Bulk import: check the names, then register them under the application id.
    check = ok(
        c.batch_check_device_names(
            m.BatchCheckDeviceNamesRequest(
                product_key=pk,
                device_name_list=[
                    m.BatchCheckDeviceNamesRequestDeviceNameList(
                        device_name=n, device_nickname=f"nick_{n}"
                    )
                    for n in ("bulk0001", "bulk0002", "north01", "x", "bulk0001")
                ],
            )
        ).body
    ).data
    assert sorted(check.invalid_device_name_list.invalid_device_name) == ["north01", "x"]
    assert check.repeated_device_name_list.repeat_devie_name_list == ["bulk0001"]
    ok(
        c.batch_register_device_with_apply_id(
            m.BatchRegisterDeviceWithApplyIdRequest(product_key=pk, apply_id=check.apply_id)
        ).body
    )
    status = ok(
        c.query_batch_register_device_status(
            m.QueryBatchRegisterDeviceStatusRequest(product_key=pk, apply_id=check.apply_id)
        ).body
    ).data
    assert status.status == "CREATE_SUCCESS" and sorted(status.valid_list.name) == [
        "bulk0001",
        "bulk0002",
    ]
    page1 = ok(
        c.query_page_by_apply_id(
            m.QueryPageByApplyIdRequest(apply_id=check.apply_id, current_page=1, page_size=10)
        ).body
    )
    assert page1.total == 2 and {
        d.device_name for d in page1.apply_device_list.apply_device_info
    } == {"bulk0001", "bulk0002"}
    assert ok(c.query_product(m.QueryProductRequest(product_key=pk)).body).data.device_count == 3

    # Static groups with a subgroup, relations, and a dynamic group.
    parent = ok(
        c.create_device_group(
            m.CreateDeviceGroupRequest(group_name="grp_" + pk[-8:], group_desc="parent")
        ).body
    ).data
    child = ok(
        c.create_device_group(
            m.CreateDeviceGroupRequest(group_name="sub_" + pk[-8:], super_group_id=parent.group_id)
        ).body
    ).data
    added = ok(
        c.batch_add_device_group_relations(
            m.BatchAddDeviceGroupRelationsRequest(
                group_id=child.group_id,
                device=[
                    m.BatchAddDeviceGroupRelationsRequestDevice(product_key=pk, device_name=n)
                    for n in ("bulk0001", "bulk0002", "ghost001")
                ],
            )
        ).body
    )
    assert (added.valid_device_count, added.success_added_device_count) == (2, 2)
    again = ok(
        c.batch_add_device_group_relations(
            m.BatchAddDeviceGroupRelationsRequest(
                group_id=child.group_id,
                device=[
                    m.BatchAddDeviceGroupRelationsRequestDevice(
                        product_key=pk, device_name="bulk0001"
                    )
                ],
            )
        ).body
    )
    assert again.already_related_group_device_count == 1 and again.success_added_device_count == 0
    removed = ok(
        c.batch_delete_device_group_relations(
            m.BatchDeleteDeviceGroupRelationsRequest(
                group_id=child.group_id,
                device=[
                    m.BatchDeleteDeviceGroupRelationsRequestDevice(
                        product_key=pk, device_name="bulk0002"
                    )
                ],
            )
        ).body
    )
    assert removed.success_device_count == 1
    subs = ok(
        c.query_device_group_list(
            m.QueryDeviceGroupListRequest(
                super_group_id=parent.group_id, current_page=1, page_size=10
            )
        ).body
    )
    assert subs.total == 1 and subs.data.group_info[0].group_id == child.group_id
    groups_of = wait_items(
        api,
        "DeviceRegistration",
        lambda v: (
            [r["groups"] for r in v if r["device_name"] == "bulk0002"][-1:] == [[]]
            and any(r["groups"] == [child.group_id] for r in v if r["device_name"] == "bulk0001")
        ),
    )
    assert groups_of
    controls = wait_items(
        api, "GroupControl", lambda v: any(r["group_id"] == child.group_id for r in v)
    )
    sub_controls = [r for _, r in controls if r["group_id"] == child.group_id]
    assert len(sub_controls) == api.settings.partitions  # broadcast to every partition
    assert (
        sub_controls[0]["parent_id"] == parent.group_id
        and sub_controls[0]["group_type"] == "STATIC"
    )

    dyn = ok(
        c.create_device_dynamic_group(
            m.CreateDeviceDynamicGroupRequest(
                group_name="dyn_" + pk[-8:], dynamic_group_expression=f'product_key = "{pk}"'
            )
        ).body
    ).data
    assert dyn.dynamic_group_expression == f'product_key = "{pk}"'
    dyns = ok(
        c.query_device_group_list(
            m.QueryDeviceGroupListRequest(
                group_types=["LINK_PLATFORM_DYNAMIC"],
                group_name=pk[-8:],
                current_page=1,
                page_size=10,
            )
        ).body
    )
    assert [(g.group_id, g.group_type) for g in dyns.data.group_info] == [
        (dyn.group_id, "LINK_PLATFORM_DYNAMIC")
    ]
