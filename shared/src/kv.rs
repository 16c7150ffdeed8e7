//! Redis: request-id idempotency and the single-sweeper lock.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::AsyncCommands;

use crate::broker::redact;
use crate::config::RedisConfig;
use crate::error::{Service, ServiceError};
use crate::tls::{self, Trust};

#[derive(Clone)]
pub struct Kv {
    conn: ConnectionManager,
    prefix: String,
    idempotency_ttl: Duration,
}

impl Kv {
    /// Connects (`rediss://`: TLS with the fleet's trust, [`crate::tls`]);
    /// the error says how to start Redis, or what is wrong with TLS.
    pub async fn connect(cfg: &RedisConfig) -> Result<Self, ServiceError> {
        let hint = |e: redis::RedisError| {
            let why = tls::error_chain(&e);
            let advice = match tls::hint(Service::Redis, &why) {
                Some(h) => format!("{h}."),
                None => "Is it running? Start it with \
                     `redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\"` \
                     (or `scripts/services.sh`), or point REDIS_URL at it."
                    .to_string(),
            };
            ServiceError::new(
                Service::Redis,
                format!(
                    "cannot connect to Redis at {}: {why}. {advice}",
                    redact(&cfg.url)
                ),
            )
        };
        let client = Self::client(&cfg.url).map_err(hint)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(3)))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(hint)?;
        Ok(Self {
            conn,
            prefix: cfg.key_prefix.clone(),
            idempotency_ttl: cfg.idempotency_ttl,
        })
    }

    /// The client for `url`. With `rediss://` and extra CAs configured, the
    /// roots are given explicitly (redis's own CA option *replaces* the
    /// platform store, so it gets the fleet's whole bundle: platform plus
    /// extra); otherwise redis reads the platform store itself.
    fn client(url: &str) -> redis::RedisResult<redis::Client> {
        if !url.starts_with("rediss://") {
            return redis::Client::open(url);
        }
        let trust = Trust::get().map_err(|e| {
            redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "cannot set up TLS",
                e,
            ))
        })?;
        match trust.bundle_pem() {
            Some(pem) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.to_vec()),
                },
            ),
            None => redis::Client::open(url),
        }
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.prefix)
    }

    /// What was recorded as done under `id`, if anything: the digest of the
    /// work's content, so a caller can tell a redelivery (same digest) from
    /// another piece of work that reuses the id.
    pub async fn done(&self, scope: &str, id: &str) -> redis::RedisResult<Option<String>> {
        let mut c = self.conn.clone();
        c.get(self.key(scope, id)).await
    }

    /// Remembers that the work with this content digest is done (after its
    /// outputs were confirmed), for `redis.idempotency_ttl`.
    pub async fn mark_done(&self, scope: &str, id: &str, digest: &str) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        let ttl = self.idempotency_ttl.as_secs().max(1);
        c.set_ex(self.key(scope, id), digest, ttl).await
    }

    /// How long a done mark is kept: the horizon of de-duplication.
    pub fn idempotency_ttl(&self) -> Duration {
        self.idempotency_ttl
    }

    /// Takes a lock for `ttl` unless someone holds it; returns its token.
    pub async fn try_lock(
        &self,
        name: &str,
        token: &str,
        ttl: Duration,
    ) -> redis::RedisResult<bool> {
        let mut c = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(self.key("lock", name))
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut c)
            .await?;
        Ok(set.is_some())
    }

    /// Extends a lock we hold; `false` when it expired or someone else holds it.
    pub async fn extend_lock(
        &self,
        name: &str,
        token: &str,
        ttl: Duration,
    ) -> redis::RedisResult<bool> {
        let mut c = self.conn.clone();
        let script = redis::Script::new(
            "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end",
        );
        let n: i64 = script
            .key(self.key("lock", name))
            .arg(token)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut c)
            .await?;
        Ok(n == 1)
    }

    /// Releases a lock only if we still hold it (compare-and-delete).
    pub async fn unlock(&self, name: &str, token: &str) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        let script = redis::Script::new(
            "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end",
        );
        let _: i64 = script
            .key(self.key("lock", name))
            .arg(token)
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }

    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map(|_| ())
    }
}
