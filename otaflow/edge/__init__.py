"""The edge: who a device is on MQTT (credentials, the broker's auth plugin) and
whether it is online (presence)."""
