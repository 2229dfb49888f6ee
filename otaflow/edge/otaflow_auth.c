/*
 * otaflow_auth: a Mosquitto 2.0 plugin that checks devices the platform's way.
 *
 * - One device, one secret. The device secret is never stored: it is
 *   hex(HMAC-SHA256(device_key, "{pk}&{dn}"))[:32], what otaflow's RegisterDevice
 *   hands out (otaflow/edge/credentials.py), so the broker needs no database.
 *   A device connects with client id "{id}|securemode=N,signmethod=M,...,timestamp=T|",
 *   user name "{dn}&{pk}" and password hex(HMAC-M(secret,
 *   "clientId{id}deviceName{dn}productKey{pk}timestamp{T}")), M one of hmacsha1,
 *   hmacsha256, hmacmd5 (the official device SDK sends exactly this).
 * - Only registered devices get in: with plugin_opt_devices_file, a device must be
 *   listed there ("pk&dn" per line; otaflow.edge.registry_sync keeps it from the
 *   registry), re-read when its modification time changes. Deleting a device
 *   removes its line, which revokes its secret.
 * - otaflow's own connectors log in as the service user (plugin_opt_service_user /
 *   plugin_opt_service_password) and may use every topic; a device may only use its
 *   own topics: /ota/device/<any>/{pk}/{dn} and /sys/{pk}/{dn}/...
 * - Presence: when a device subscribes to its upgrade topic (from then on an offer
 *   reaches it) the plugin publishes {"status":"online",...} on
 *   /as/mqtt/status/{pk}/{dn}, the platform's shape; when that connection ends
 *   (clean, lost, kicked) {"status":"offline",...}. A connection that another one
 *   of the same device replaced (session take-over) ends without "offline".
 *   plugin_opt_presence false turns this off.
 */
#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#define MAX_FIELD 128
#define BUCKETS 65536
#define STATUS_PREFIX "/as/mqtt/status/"

struct connection {
	char *user;
	const struct mosquitto *client;
	bool online;
	struct connection *next;
};

struct name {
	char *text;
	struct name *next;
};

static mosquitto_plugin_id_t *plugin_id;
static char *device_key;
static char *service_user;
static char *service_password;
static char *devices_file;
static bool presence = true;
static struct connection *connections[BUCKETS];
static struct name **registered; /* BUCKETS chains, NULL until a devices file was read */
static time_t devices_mtime;
static long devices_mtime_ns;

static unsigned long hash(const char *s)
{
	unsigned long h = 5381;
	while(*s) h = h * 33 + (unsigned char)*s++;
	return h % BUCKETS;
}

static bool equal_ct(const char *a, const char *b)
{
	/* Constant time for equal lengths; lengths are not secret (always 40/64/32). */
	size_t la = strlen(a), lb = strlen(b);
	unsigned char diff = la != lb;
	for(size_t i = 0; i < la && i < lb; i++) diff |= (unsigned char)(tolower((unsigned char)a[i]) ^ tolower((unsigned char)b[i]));
	return diff == 0;
}

static void to_hex(const unsigned char *raw, unsigned int len, char *out)
{
	static const char digits[] = "0123456789abcdef";
	for(unsigned int i = 0; i < len; i++) {
		out[2 * i] = digits[raw[i] >> 4];
		out[2 * i + 1] = digits[raw[i] & 15];
	}
	out[2 * len] = '\0';
}

static bool hmac_hex(const EVP_MD *md, const char *key, const char *msg, char *out)
{
	unsigned char raw[EVP_MAX_MD_SIZE];
	unsigned int len = 0;
	if(!HMAC(md, key, (int)strlen(key), (const unsigned char *)msg, strlen(msg), raw, &len)) return false;
	to_hex(raw, len, out);
	return true;
}

/* "dn&pk" -> dn, pk (each 1..MAX_FIELD-1 characters, no '&', no '/', '+', '#'). */
static bool split_user(const char *user, char *dn, char *pk)
{
	const char *amp = strchr(user, '&');
	if(!amp || strchr(amp + 1, '&')) return false;
	size_t ld = (size_t)(amp - user), lp = strlen(amp + 1);
	if(ld == 0 || lp == 0 || ld >= MAX_FIELD || lp >= MAX_FIELD) return false;
	memcpy(dn, user, ld);
	dn[ld] = '\0';
	memcpy(pk, amp + 1, lp + 1);
	if(strpbrk(dn, "/+#") || strpbrk(pk, "/+#")) return false;
	return true;
}

static void free_registered(struct name **set)
{
	if(!set) return;
	for(int i = 0; i < BUCKETS; i++) {
		while(set[i]) {
			struct name *next = set[i]->next;
			free(set[i]->text);
			free(set[i]);
			set[i] = next;
		}
	}
	free(set);
}

/* Re-read the registered devices ("pk&dn" per line) when the file changed. A file
 * that cannot be read keeps the last list: never everyone let in, nor everyone out. */
static void load_registered(void)
{
	struct stat st;
	if(!devices_file || stat(devices_file, &st) != 0) return;
	if(registered && st.st_mtim.tv_sec == devices_mtime && st.st_mtim.tv_nsec == devices_mtime_ns) return;
	FILE *f = fopen(devices_file, "r");
	if(!f) return;
	struct name **set = calloc(BUCKETS, sizeof(*set));
	if(!set) {
		fclose(f);
		return;
	}
	char line[2 * MAX_FIELD + 4];
	while(fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\r\n")] = '\0';
		if(!line[0]) continue;
		struct name *n = malloc(sizeof(*n));
		if(!n) break;
		n->text = strdup(line);
		unsigned long h = hash(line);
		n->next = set[h];
		set[h] = n;
	}
	fclose(f);
	free_registered(registered);
	registered = set;
	devices_mtime = st.st_mtim.tv_sec;
	devices_mtime_ns = st.st_mtim.tv_nsec;
}

/* Without a devices file every device with a valid signature is let in. */
static bool is_registered(const char *pk, const char *dn)
{
	char text[2 * MAX_FIELD + 2];
	if(!devices_file) return true;
	load_registered();
	if(!registered) return false;
	snprintf(text, sizeof(text), "%s&%s", pk, dn);
	for(struct name *n = registered[hash(text)]; n; n = n->next) {
		if(!strcmp(n->text, text)) return true;
	}
	return false;
}

static struct connection *find(const char *user)
{
	for(struct connection *c = connections[hash(user)]; c; c = c->next) {
		if(!strcmp(c->user, user)) return c;
	}
	return NULL;
}

static void remember(const char *user, const struct mosquitto *client)
{
	struct connection *c = find(user);
	if(!c) {
		c = calloc(1, sizeof(*c));
		if(!c) return;
		c->user = strdup(user);
		unsigned long h = hash(user);
		c->next = connections[h];
		connections[h] = c;
	}
	c->client = client;
	c->online = false;
}

static void forget(const char *user)
{
	unsigned long h = hash(user);
	for(struct connection **p = &connections[h]; *p; p = &(*p)->next) {
		if(!strcmp((*p)->user, user)) {
			struct connection *gone = *p;
			*p = gone->next;
			free(gone->user);
			free(gone);
			return;
		}
	}
}

static void publish_status(const char *pk, const char *dn, const char *status, const char *ip)
{
	struct timeval tv;
	struct tm tm;
	char when[40], topic[2 * MAX_FIELD + 32];
	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	size_t n = strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
	snprintf(when + n, sizeof(when) - n, ".%03ld", (long)(tv.tv_usec / 1000));
	snprintf(topic, sizeof(topic), STATUS_PREFIX "%s/%s", pk, dn);
	char payload[4 * MAX_FIELD + 256];
	int len = snprintf(payload, sizeof(payload),
		"{\"status\":\"%s\",\"productKey\":\"%s\",\"deviceName\":\"%s\",\"time\":\"%s\","
		"\"lastTime\":\"%s\",\"utcLastTime\":%lld,\"clientIp\":\"%s\"}",
		status, pk, dn, when, when,
		(long long)tv.tv_sec * 1000 + tv.tv_usec / 1000, ip ? ip : "");
	if(len < 0 || (size_t)len >= sizeof(payload)) return;
	mosquitto_broker_publish_copy(NULL, topic, len, payload, 1, false, NULL);
}

static bool is_service(const char *user)
{
	return user && service_user && !strcmp(user, service_user);
}

/* Checks the platform's device signature; fills dn/pk on success. */
static bool device_signature_ok(const char *client_id, const char *user, const char *password)
{
	char dn[MAX_FIELD], pk[MAX_FIELD];
	if(!client_id || !user || !password || !device_key) return false;
	if(!split_user(user, dn, pk)) return false;
	const char *bar = strchr(client_id, '|');
	size_t id_len = bar ? (size_t)(bar - client_id) : strlen(client_id);
	if(id_len == 0 || id_len >= 2 * MAX_FIELD) return false;
	char id[2 * MAX_FIELD];
	memcpy(id, client_id, id_len);
	id[id_len] = '\0';

	char method[32] = "";
	char timestamp[32] = "";
	if(bar) {
		const char *p = bar + 1;
		while(*p && *p != '|') {
			size_t len = strcspn(p, ",|");
			const char *eq = memchr(p, '=', len);
			if(eq) {
				size_t kl = (size_t)(eq - p), vl = len - kl - 1;
				if(kl == 10 && !strncmp(p, "signmethod", 10) && vl < sizeof(method)) {
					memcpy(method, eq + 1, vl);
					method[vl] = '\0';
				} else if(kl == 9 && !strncmp(p, "timestamp", 9) && vl < sizeof(timestamp)) {
					memcpy(timestamp, eq + 1, vl);
					timestamp[vl] = '\0';
				}
			}
			p += len;
			if(*p == ',') p++;
		}
	}
	const EVP_MD *md;
	if(!strcmp(method, "hmacsha1")) md = EVP_sha1();
	else if(!strcmp(method, "hmacsha256")) md = EVP_sha256();
	else if(!strcmp(method, "hmacmd5") || !method[0]) md = EVP_md5(); /* the platform's default */
	else return false;

	char key_msg[2 * MAX_FIELD + 2], secret_hex[2 * EVP_MAX_MD_SIZE + 1];
	snprintf(key_msg, sizeof(key_msg), "%s&%s", pk, dn);
	if(!hmac_hex(EVP_sha256(), device_key, key_msg, secret_hex)) return false;
	secret_hex[32] = '\0';

	char content[6 * MAX_FIELD + 96], expected[2 * EVP_MAX_MD_SIZE + 1];
	int n = snprintf(content, sizeof(content), "clientId%sdeviceName%sproductKey%s%s%s",
		id, dn, pk, timestamp[0] ? "timestamp" : "", timestamp);
	if(n < 0 || (size_t)n >= sizeof(content)) return false;
	if(!hmac_hex(md, secret_hex, content, expected)) return false;
	if(!equal_ct(expected, password)) return false;
	return is_registered(pk, dn);
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	(void)event;
	(void)userdata;
	if(is_service(ed->username)) {
		return (service_password && ed->password && equal_ct(service_password, ed->password))
			? MOSQ_ERR_SUCCESS : MOSQ_ERR_AUTH;
	}
	if(!device_signature_ok(mosquitto_client_id(ed->client), ed->username, ed->password)) {
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "otaflow_auth: refused %s",
			ed->username ? ed->username : "(no user name)");
		return MOSQ_ERR_AUTH;
	}
	remember(ed->username, ed->client);
	return MOSQ_ERR_SUCCESS;
}

/* Is `topic` (a topic, or a filter when subscribing) one of the device's own? */
static bool own_topic(const char *topic, const char *pk, const char *dn, bool *upgrade)
{
	char prefix[2 * MAX_FIELD + 8];
	*upgrade = false;
	snprintf(prefix, sizeof(prefix), "/sys/%s/%s/", pk, dn);
	if(!strncmp(topic, prefix, strlen(prefix))) return true;
	if(strncmp(topic, "/ota/device/", 12)) return false;
	const char *kind = topic + 12;
	const char *slash = strchr(kind, '/');
	if(!slash || slash == kind) return false;
	size_t kind_len = (size_t)(slash - kind);
	if(memchr(kind, '#', kind_len)) return false;
	char rest[2 * MAX_FIELD + 2];
	snprintf(rest, sizeof(rest), "%s/%s", pk, dn);
	if(strcmp(slash + 1, rest)) return false;
	*upgrade = (kind_len == 7 && !strncmp(kind, "upgrade", 7)) || (kind_len == 1 && kind[0] == '+');
	return true;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	char dn[MAX_FIELD], pk[MAX_FIELD];
	bool upgrade;
	(void)event;
	(void)userdata;
	const char *user = mosquitto_client_username(ed->client);
	if(is_service(user)) return MOSQ_ERR_SUCCESS;
	if(ed->access == MOSQ_ACL_UNSUBSCRIBE) return MOSQ_ERR_SUCCESS;
	if(!user || !split_user(user, dn, pk)) return MOSQ_ERR_ACL_DENIED;
	if(!own_topic(ed->topic, pk, dn, &upgrade)) return MOSQ_ERR_ACL_DENIED;
	if(presence && upgrade && ed->access == MOSQ_ACL_SUBSCRIBE) {
		struct connection *c = find(user);
		if(c && c->client == ed->client && !c->online) {
			c->online = true;
			publish_status(pk, dn, "online", mosquitto_client_address(ed->client));
		}
	}
	return MOSQ_ERR_SUCCESS;
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *ed = event_data;
	char dn[MAX_FIELD], pk[MAX_FIELD];
	(void)event;
	(void)userdata;
	const char *user = mosquitto_client_username(ed->client);
	if(!user || is_service(user)) return MOSQ_ERR_SUCCESS;
	struct connection *c = find(user);
	if(!c || c->client != ed->client) return MOSQ_ERR_SUCCESS; /* replaced, or never let in */
	if(presence && split_user(user, dn, pk)) {
		publish_status(pk, dn, "offline", mosquitto_client_address(ed->client));
	}
	forget(user);
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++) {
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **user_data,
		struct mosquitto_opt *opts, int opt_count)
{
	(void)user_data;
	plugin_id = identifier;
	for(int i = 0; i < opt_count; i++) {
		if(!strcmp(opts[i].key, "device_key")) device_key = strdup(opts[i].value);
		else if(!strcmp(opts[i].key, "service_user")) service_user = strdup(opts[i].value);
		else if(!strcmp(opts[i].key, "service_password")) service_password = strdup(opts[i].value);
		else if(!strcmp(opts[i].key, "devices_file")) devices_file = strdup(opts[i].value);
		else if(!strcmp(opts[i].key, "presence")) presence = strcmp(opts[i].value, "false") != 0;
	}
	if(!device_key || !device_key[0]) {
		mosquitto_log_printf(MOSQ_LOG_ERR, "otaflow_auth: plugin_opt_device_key is required");
		return MOSQ_ERR_INVAL;
	}
	int rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL);
	if(rc == MOSQ_ERR_SUCCESS) rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
	if(rc == MOSQ_ERR_SUCCESS) rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL, NULL);
	return rc;
}

int mosquitto_plugin_cleanup(void *user_data, struct mosquitto_opt *opts, int opt_count)
{
	(void)user_data;
	(void)opts;
	(void)opt_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
	for(int i = 0; i < BUCKETS; i++) {
		while(connections[i]) {
			struct connection *next = connections[i]->next;
			free(connections[i]->user);
			free(connections[i]);
			connections[i] = next;
		}
	}
	free_registered(registered);
	registered = NULL;
	free(device_key);
	free(service_user);
	free(service_password);
	free(devices_file);
	return MOSQ_ERR_SUCCESS;
}
