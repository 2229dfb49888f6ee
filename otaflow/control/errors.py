"""Errors the control plane answers with, in the platform's shape (Code + ErrorMessage)."""

from __future__ import annotations


class ApiError(Exception):
    """A refused call. ``code`` is the platform's error code, ``message`` its text."""

    def __init__(self, code: str, message: str, http_status: int = 200) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        # The platform answers business errors with HTTP 200 and Success=false;
        # only authentication and malformed requests use 4xx.
        self.http_status = http_status


def missing(name: str) -> ApiError:
    return ApiError("iot.common.InvalidFormattedParameter", f"{name} is mandatory for this action.")


def invalid(name: str, why: str) -> ApiError:
    return ApiError(
        "iot.common.InvalidFormattedParameter", f"The parameter {name} is invalid: {why}"
    )


# -- business error codes (HTTP 200, Success=false) -------------------------------------
# Codes the platform documents are used as they are (iot.ota.FirmwareNotFound ...);
# the others follow its style (iot.ota.* / iot.device.* / iot.group.* / iot.prod.*).

FIRMWARE_NOT_FOUND = "iot.ota.FirmwareNotFound"
FIRMWARE_NAME_EXISTS = "iot.ota.FirmwareNameAlreadyExist"
FIRMWARE_IN_USE = "iot.ota.FirmwareHasRunningJob"
FIRMWARE_NOT_VERIFIED = "iot.ota.FirmwareNotVerified"
FIRMWARE_ALREADY_VERIFIED = "iot.ota.FirmwareAlreadyVerified"
FIRMWARE_VERIFYING = "iot.ota.FirmwareVerifying"
FIRMWARE_FILE_NOT_FOUND = "iot.ota.FirmwareFileNotExist"
FIRMWARE_SIGN_MISMATCH = "iot.ota.FirmwareSignMismatch"
FIRMWARE_SIZE_MISMATCH = "iot.ota.FirmwareSizeMismatch"
FIRMWARE_TOO_LARGE = "iot.ota.FirmwareSizeExceedLimit"
MODULE_NOT_FOUND = "iot.ota.ModuleNotExist"
MODULE_EXISTS = "iot.ota.ModuleAlreadyExist"
MODULE_IN_USE = "iot.ota.ModuleHasFirmware"
MODULE_DEFAULT = "iot.ota.DefaultModuleNotAllowed"
MODULE_LIMIT = "iot.ota.ModuleExceedLimit"
JOB_NOT_FOUND = "iot.ota.JobNotExist"
JOB_NOT_IN_PROGRESS = "iot.ota.JobNotInProgress"
JOB_TYPE_MISMATCH = "iot.ota.JobTypeMismatch"
JOB_NOT_DYNAMIC = "iot.ota.NotDynamicJob"
DYNAMIC_JOB_EXISTS = "iot.ota.DynamicJobAlreadyExist"
DYNAMIC_GROUP_PACKAGE_LIMIT = "iot.ota.DynamicGroupPackageExceedLimit"
DYNAMIC_GROUP_MODE_MISMATCH = "iot.ota.DynamicGroupJobModeMismatch"
MULTI_MODULE_OVERWRITE = "iot.ota.MultiModuleModeConflictWithOverwriteMode"
RETRY_INTERVAL = "iot.ota.InvalidRetryInterval"
RETRY_NOT_BELOW_TIMEOUT = "iot.ota.RetryIntervalNotLessThanTimeout"
RETRY_COUNT = "iot.ota.InvalidRetryCount"
TIMEOUT = "iot.ota.InvalidTimeoutInMinutes"
SCHEDULE_TIME = "iot.ota.InvalidScheduleTime"
SCHEDULE_FINISH_TIME = "iot.ota.InvalidScheduleFinishTime"
SCHEDULE_DYNAMIC = "iot.ota.ScheduleNotSupportedForDynamicJob"
GRAY_DYNAMIC = "iot.ota.GrayNotSupportedForDynamicJob"
GRAY_PERCENT = "iot.ota.InvalidGrayPercent"
SRC_VERSION_LIMIT = "iot.ota.SrcVersionExceedLimit"
SRC_VERSION_DIFF = "iot.ota.SrcVersionMismatchDiffFirmware"
SRC_VERSION_NOT_EDITABLE = "iot.ota.SrcVersionNotEditable"
TIMEOUT_NOT_EDITABLE = "iot.ota.TimeoutNotEditable"
TARGET_NAME_LIMIT = "iot.ota.TargetDeviceNameExceedLimit"
DN_LIST_LIMIT = "iot.ota.DeviceNameListExceedLimit"
DN_LIST_NOT_FOUND = "iot.ota.DeviceNameListFileNotFound"
DEVICE_NAMES_INVALID = "iot.ota.InvalidTargetDeviceName"
NO_VALID_DEVICE = "iot.ota.NoValidDeviceInScope"
TAGS = "iot.ota.InvalidTag"
TASK_LIMIT = "iot.ota.TaskIdExceedLimit"
TASK_NOT_FOUND = "iot.ota.TaskNotExist"
CANCEL_FLAGS = "iot.ota.NoCancelTaskStatusSpecified"
PRODUCT_NOT_FOUND = "iot.prod.NotExistedProduct"
PRODUCT_NAME_EXISTS = "iot.prod.AlreadyExistedProductName"
DEVICE_NOT_FOUND = "iot.device.DeviceNotExist"
DEVICE_EXISTS = "iot.device.DeviceNameAlreadyExist"
DEVICE_NAME_INVALID = "iot.device.InvalidFormattedDeviceName"
APPLY_NOT_FOUND = "iot.device.ApplyIdNotExist"
APPLY_STATE = "iot.device.ApplyStatusNotAllowed"
GROUP_NOT_FOUND = "iot.group.GroupNotExist"
GROUP_NAME_EXISTS = "iot.group.GroupNameExisted"
GROUP_TYPE = "iot.group.GroupTypeMismatch"
GROUP_DEPTH = "iot.group.SubGroupDepthExceeded"
GROUP_DEVICE_LIMIT = "iot.group.DeviceExceedLimit"
INVALID_PARAMETER = "iot.common.InvalidFormattedParameter"

# -- the console doc's rules (issue 12); otaflow's codes in the platform's style ----------
SCOPE_DYNAMIC = "iot.ota.ScopeNotSupportedForDynamicJob"
SRC_VERSION_TARGETED = "iot.ota.SrcVersionNotSupportedForSpecificJob"
DYNAMIC_MODE_MIX = "iot.ota.MultiModuleDynamicJobModeMix"
CONFIRM_OUTSIDE_SCHEDULE = "iot.ota.NotInScheduleTimeRange"
GROUP_EXPRESSION = "iot.group.InvalidDynamicGroupExpression"
GROUP_HAS_SUBGROUP = "iot.group.GroupHasSubGroup"
