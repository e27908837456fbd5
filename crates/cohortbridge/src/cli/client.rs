//! HTTP client of the admin API, for the CLI.

use anyhow::{bail, Context};
use serde_json::Value;

pub struct AdminClient {
    http: reqwest::Client,
    server: String,
    admin_key: String,
    project: i64,
}

impl AdminClient {
    pub fn new(server: &str, admin_key: &str, project: i64) -> anyhow::Result<Self> {
        // Credentials in the address would end up in error messages. The admin key is the
        // credential, so an address that contains any is rejected without echoing it.
        if let Ok(url) = reqwest::Url::parse(server) {
            if !url.username().is_empty() || url.password().is_some() {
                bail!(
                    "invalid --server: the address carries a user name or password, which \
                     cohortbridge does not use; give the plain address (such as \
                     http://{}:{}) and the admin key",
                    url.host_str().unwrap_or("127.0.0.1"),
                    url.port_or_known_default().unwrap_or(8080)
                );
            }
        }
        let http = reqwest::Client::builder()
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            http,
            server: server.trim_end_matches('/').to_owned(),
            admin_key: admin_key.to_owned(),
            project,
        })
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    /// GET a path under the project, such as `/cohorts`; `""` is the project itself.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = self.url(path);
        let request = self.http.get(&url).bearer_auth(&self.admin_key);
        Self::send(request, &url).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let url = self.url(path);
        let request = self.http.post(&url).bearer_auth(&self.admin_key).json(body);
        Self::send(request, &url).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        let url = self.url(path);
        let request = self.http.delete(&url).bearer_auth(&self.admin_key);
        Self::send(request, &url).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let url = self.url(path);
        let request = self.http.put(&url).bearer_auth(&self.admin_key).json(body);
        Self::send(request, &url).await
    }

    /// POST a path below `/api/v1` that belongs to no project, such as `/users`.
    pub async fn post_root(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let url = format!("{}/api/v1{path}", self.server);
        let request = self.http.post(&url).bearer_auth(&self.admin_key).json(body);
        Self::send(request, &url).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1/projects/{}{path}", self.server, self.project)
    }

    async fn send(request: reqwest::RequestBuilder, url: &str) -> anyhow::Result<Value> {
        let response = request.send().await.with_context(|| {
            format!("cannot reach the server at {url}; is `cohortbridge serve` running?")
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let message = body
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| body.to_string());
            bail!("server returned HTTP {}: {message}", status.as_u16());
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::AdminClient;

    #[test]
    fn server_with_credentials_is_rejected_unechoed() {
        let error = AdminClient::new("http://user:s3cret-pass@127.0.0.1:8080", "key", 1)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("--server"), "{error}");
        assert!(!error.contains("s3cret-pass"), "{error}");
        assert!(!error.contains("user:"), "{error}");
        assert!(AdminClient::new("http://127.0.0.1:8080", "key", 1).is_ok());
    }
}
