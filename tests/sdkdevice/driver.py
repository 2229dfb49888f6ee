"""Subprocess driver for the official ``aliyun-iot-linkkit`` device SDK.

Runs inside the dedicated linkkit virtualenv (python3, paho-mqtt 1.x, aliyun-iot-linkkit
1.2.13) that ``tests.sdkdevice`` creates, never inside the project's own environment
(the project uses paho-mqtt 2, which breaks the SDK).

Protocol: JSON lines.
- stdin, one command per line: ``{"cmd": "...", "id": N, ...}`` with cmd one of
  ``report_version`` (version, module), ``report_progress`` (step, desc, module),
  ``request_firmware`` (module), ``download`` (url, sign_method, sign, path, size),
  ``close``.  ``module`` may be null to leave it out of the payload.
- stdout, one event per line: ``started``, ``connected`` (sent once the OTA topics are
  subscribed, i.e. after the SUBACK), ``connect_failed``, ``disconnected``, ``ota``
  (the arguments of ``on_ota_message_arrived``), ``error``, ``closed``, and one reply
  per command carrying the command's ``id`` (``report_version``, ``report_progress``,
  ``request_firmware``, ``download``).  A reply with an ``error`` key means the
  command failed.

The real stdout file descriptor is reserved for this protocol; everything else the
process prints (SDK and paho logs included) goes to stderr.

The device secret is read from the environment variable OTAFLOW_SDK_DEVICE_SECRET.
"""

import argparse
import enum
import json
import logging
import os
import sys
import threading
import traceback


def _code(value):
    """Normalise an SDK return value (ErrorCode member or int) to (name, int)."""
    if isinstance(value, enum.Enum):
        return value.name, value.value
    if isinstance(value, int):
        return ("SUCCESS" if value == 0 else str(value)), value
    return repr(value), None


class Driver:
    def __init__(self, args, emit):
        from linkkit import linkkit as linkkit_module

        self.args = args
        self.emit = emit
        self.LinkKit = linkkit_module.LinkKit
        self.pk = args.product_key
        self.dn = args.device_name
        self.upgrade_topic = f"/ota/device/upgrade/{self.pk}/{self.dn}"
        self.get_reply_topic = f"/sys/{self.pk}/{self.dn}/thing/ota/firmware/get_reply"
        self.progress_topic = f"/ota/device/progress/{self.pk}/{self.dn}"
        self.progress_id = 0
        self.sub_lock = threading.Lock()
        self.sub_mids = {}
        self.connect_count = 0

        secret = os.environ.get("OTAFLOW_SDK_DEVICE_SECRET", "secret")
        lk = self.LinkKit(
            host_name="cn-shanghai",
            product_key=self.pk,
            device_name=self.dn,
            device_secret=secret,
        )
        if args.log_level:
            lk.enable_logger(getattr(logging, args.log_level.upper(), logging.INFO))
        lk.config_mqtt(port=args.port, secure="", endpoint=args.host)
        lk.on_connect = self.on_connect
        lk.on_disconnect = self.on_disconnect
        lk.on_subscribe_topic = self.on_subscribe_topic
        # A property on LinkKit: assigning the attribute registers the callback.
        lk.on_ota_message_arrived = self.on_ota_message_arrived
        self.lk = lk

    # SDK callbacks (run on the SDK's handler thread) --------------------------------

    def on_connect(self, session_flag, rc, userdata):
        if rc != 0:
            # The SDK also calls on_connect for failed attempts: rc 9 socket error (it
            # retries), 6 TLS setup error, 7 connect_async raised; CONNACK refusals
            # never reach this callback.
            self.emit({"event": "connect_failed", "rc": rc})
            return
        self.connect_count += 1
        topics = [(self.upgrade_topic, 1), (self.get_reply_topic, 1)]
        try:
            with self.sub_lock:
                rc_sub, mid = self.lk.subscribe_topic(topics)
                if rc_sub == 0 and mid is not None:
                    self.sub_mids[mid] = {
                        "session_present": bool(session_flag),
                        "rc": rc,
                        "count": self.connect_count,
                    }
        except Exception as e:
            self.emit({"event": "error", "where": "subscribe", "error": repr(e)})
            return
        if rc_sub != 0:
            self.emit({"event": "error", "where": "subscribe", "error": f"rc={rc_sub!r}"})

    def on_subscribe_topic(self, mid, granted_qos, userdata):
        with self.sub_lock:
            info = self.sub_mids.pop(mid, None)
        if info is None:
            return
        granted = list(granted_qos)
        if any(q not in (0, 1) for q in granted):
            self.emit({"event": "error", "where": "subscribe", "error": f"granted {granted!r}"})
            return
        event = {"event": "connected", "granted_qos": granted}
        event.update(info)
        self.emit(event)

    def on_disconnect(self, rc, userdata):
        self.emit({"event": "disconnected", "rc": rc})

    def on_ota_message_arrived(self, ota_type, version, size, url, sign_method, sign, module, ext):
        self.emit(
            {
                "event": "ota",
                "type": ota_type,
                "version": version,
                "size": size,
                "url": url,
                "sign_method": sign_method,
                "sign": sign,
                "module": module,
                "ext": ext,
            }
        )

    # commands -----------------------------------------------------------------------

    def connected(self):
        return self.lk.check_state() == self.LinkKit.LinkKitState.CONNECTED

    def require_connected(self):
        if not self.connected():
            raise RuntimeError(f"not connected (state {self.lk.check_state().name})")

    def cmd_report_version(self, msg):
        self.require_connected()
        module = msg.get("module")
        # Returns OTA_PUB_FAILED even on success: it compares paho's MQTTMessageInfo with 0.
        name, value = _code(self.lk.ota_report_version(module, msg["version"]))
        return {"rc": name, "rc_value": value}

    def cmd_report_progress(self, msg):
        self.require_connected()
        self.progress_id += 1
        params = {"step": str(int(msg["step"])), "desc": msg.get("desc") or ""}
        if msg.get("module"):
            params["module"] = msg["module"]
        payload = json.dumps({"id": str(self.progress_id), "params": params})
        rc, _mid = self.lk.publish_topic(self.progress_topic, payload, int(msg.get("qos", 0)))
        if rc != 0:
            raise RuntimeError(f"publish_topic failed rc={rc!r}")
        return {"rc": "SUCCESS", "rc_value": 0, "payload": payload}

    def cmd_request_firmware(self, msg):
        self.require_connected()
        # Same MQTTMessageInfo == 0 bug as ota_report_version: the return value lies.
        name, value = _code(self.lk.query_ota_firmware(msg.get("module")))
        return {"rc": name, "rc_value": value}

    def cmd_download(self, msg):
        path = msg["path"]
        try:
            result = self.lk.download_ota_firmware(
                msg["url"], path, msg["sign_method"], msg["sign"]
            )
        except Exception as e:  # it raises TypeError for an unknown sign method
            reply = {"result": "EXCEPTION", "code": None, "error": repr(e)}
        else:
            name, value = _code(result)
            reply = {"result": name, "code": value}
        try:
            reply["bytes"] = os.path.getsize(path)
        except OSError:
            reply["bytes"] = None
        return reply

    def run_command(self, msg):
        cmd = msg.get("cmd")
        reply = {"event": cmd, "id": msg.get("id")}
        handler = getattr(self, f"cmd_{cmd}", None) if isinstance(cmd, str) else None
        try:
            if handler is None:
                raise ValueError(f"unknown command {cmd!r}")
            reply.update(handler(msg))
        except Exception as e:
            reply["error"] = repr(e)
            traceback.print_exc()
        self.emit(reply)

    def close(self):
        done = threading.Event()

        def destruct():
            try:
                self.lk.destruct()
            except Exception:
                traceback.print_exc()
            done.set()

        threading.Thread(target=destruct, daemon=True).start()
        done.wait(5)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--product-key", required=True)
    parser.add_argument("--device-name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--log-level", default="")
    args = parser.parse_args()

    # Keep the real stdout for the JSON-lines protocol; send every other print to stderr.
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    emit_lock = threading.Lock()

    def emit(obj):
        line = json.dumps(obj)
        with emit_lock:
            proto.write(line + "\n")
            proto.flush()

    try:
        import paho.mqtt

        driver = Driver(args, emit)
    except Exception as e:
        traceback.print_exc()
        emit({"event": "error", "where": "startup", "error": repr(e)})
        proto.close()
        os._exit(2)

    emit(
        {
            "event": "started",
            "paho_mqtt": getattr(paho.mqtt, "__version__", "?"),
            "python": sys.version.split()[0],
            "pid": os.getpid(),
        }
    )
    driver.lk.connect_async()

    closing_id = None
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            msg = json.loads(line)
        except ValueError as e:
            emit({"event": "error", "where": "stdin", "error": repr(e)})
            continue
        if msg.get("cmd") == "close":
            closing_id = msg.get("id")
            break
        if msg.get("cmd") == "download":
            # Downloads block; keep reading commands meanwhile.
            threading.Thread(target=driver.run_command, args=(msg,), daemon=True).start()
        else:
            driver.run_command(msg)

    driver.close()
    emit({"event": "closed", "id": closing_id})
    proto.close()
    sys.stderr.flush()
    # The SDK's worker threads are not all daemons; do not wait for them.
    os._exit(0)


if __name__ == "__main__":
    main()
