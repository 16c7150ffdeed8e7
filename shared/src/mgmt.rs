//! A small client for the RabbitMQ management HTTP API: topology plans,
//! `status`, `dlq list`, and (in tests) vhost set-up and definition imports.

use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::Url;
use serde_json::Value;

use crate::topology::enc;

#[derive(Clone)]
pub struct Management {
    http: reqwest::Client,
    base: Url,
    user: String,
    password: String,
}

impl Management {
    /// `url` carries the credentials: `http://guest:guest@127.0.0.1:15672`.
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let mut base = Url::parse(url).with_context(|| format!("bad management URL {url:?}"))?;
        let user = match base.username() {
            "" => "guest".to_string(),
            u => u.to_string(),
        };
        let password = base.password().unwrap_or("guest").to_string();
        let _ = base.set_username("");
        let _ = base.set_password(None);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()?;
        Ok(Self {
            http,
            base,
            user,
            password,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/{}", self.base.as_str().trim_end_matches('/'), path)
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> anyhow::Result<reqwest::Response> {
        let res = req
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .with_context(|| {
                format!(
                    "cannot reach the RabbitMQ management API at {} ({what}); enable it with \
                     `rabbitmq-plugins enable rabbitmq_management` or set RABBITMQ_MANAGEMENT_URL",
                    self.base
                )
            })?;
        if !res.status().is_success() {
            let status = res.status();
            let body = res.text().await.unwrap_or_default();
            bail!("management API {what}: {status}: {body}");
        }
        Ok(res)
    }

    /// GET a JSON value.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let res = self.send(self.http.get(self.url(path)), path).await?;
        Ok(res.json().await?)
    }

    /// GET a JSON array.
    pub async fn list(&self, path: &str) -> anyhow::Result<Vec<Value>> {
        match self.get(path).await? {
            Value::Array(a) => Ok(a),
            other => bail!("management API {path}: expected a list, got {other}"),
        }
    }

    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<()> {
        self.send(self.http.put(self.url(path)).json(body), path)
            .await?;
        Ok(())
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<()> {
        self.send(self.http.post(self.url(path)).json(body), path)
            .await?;
        Ok(())
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.send(self.http.delete(self.url(path)), path).await?;
        Ok(())
    }

    /// Creates a vhost and gives `user` full permissions on it.
    pub async fn create_vhost(&self, vhost: &str) -> anyhow::Result<()> {
        self.put(&format!("vhosts/{}", enc(vhost)), &serde_json::json!({}))
            .await?;
        self.put(
            &format!("permissions/{}/{}", enc(vhost), enc(&self.user)),
            &serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"}),
        )
        .await
    }

    pub async fn delete_vhost(&self, vhost: &str) -> anyhow::Result<()> {
        self.delete(&format!("vhosts/{}", enc(vhost))).await
    }

    /// Queue details (depth, consumers, rates) of one vhost.
    pub async fn queues(&self, vhost: &str) -> anyhow::Result<Vec<Value>> {
        self.list(&format!("queues/{}", enc(vhost))).await
    }
}

/// The vhost an AMQP URL names (`/` when it names none).
pub fn vhost_of(amqp_url: &str) -> String {
    let Ok(url) = Url::parse(amqp_url) else {
        return "/".into();
    };
    let path = url.path().trim_start_matches('/');
    if path.is_empty() {
        return "/".into();
    }
    percent_decode(path)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vhosts_are_read_from_amqp_urls() {
        assert_eq!(vhost_of("amqp://guest:guest@127.0.0.1:5672/%2f"), "/");
        assert_eq!(vhost_of("amqp://guest:guest@127.0.0.1:5672"), "/");
        assert_eq!(vhost_of("amqp://127.0.0.1:5672/test-1"), "test-1");
        assert_eq!(enc("/"), "%2F");
    }
}
