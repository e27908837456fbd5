//! Starting the server: open the store, create the default project and the admin key on first
//! start, check the encryption key against the database, start the sync scheduler and serve HTTP
//! until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, AppState};
use crate::braze::client::{BrazeClient, RetryPolicy};
use crate::config::ServeConfig;
use crate::secrets::{self, SecretBox};
use crate::store::{self, Database, NewProject, Store};
use crate::sync::{self, PartnerSettings, SyncEngine};

const ADMIN_KEY_HASH_SETTING: &str = "admin_key_hash";
/// The id that names this installation in the ids of its Braze cohorts.
const INSTALLATION_ID_SETTING: &str = "installation_id";
/// Failed web UI logins allowed per e-mail address and per client address in the window.
const LOGIN_MAX_FAILURES: usize = 5;
const LOGIN_FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// A known text encrypted with the first node's key, so that a node started with another key
/// stops at once instead of failing later on every stored secret.
const SECRET_KEY_CHECK_SETTING: &str = "secret_key_check";
const SECRET_KEY_CHECK_TEXT: &str = "cohortbridge secret key check";
const NODE_ID_FILE: &str = "node-id";

/// A server started in this process.
pub struct RunningServer {
    pub addr: SocketAddr,
    /// The admin key generated on this start, when none existed; `None` on later starts.
    pub generated_admin_key: Option<String>,
    shutdown: watch::Sender<bool>,
    http: JoinHandle<()>,
    scheduler: JoinHandle<()>,
    /// Holds the data folder's lock for as long as the server runs.
    _data_dir_lock: std::fs::File,
}

impl RunningServer {
    /// Stops accepting requests, lets requests in flight finish and stops the scheduler.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.http.await;
        let _ = self.scheduler.await;
    }
}

/// Opens the store (the SQLite file in `config.data_dir`, or PostgreSQL), bootstraps it and
/// starts serving on `config.listen`.
pub async fn start(config: ServeConfig) -> anyhow::Result<RunningServer> {
    // Settings are checked and the port is bound before anything is written to disk.
    if let Some(key) = &config.admin_key {
        anyhow::ensure!(
            key.len() >= 16,
            "the admin key must be at least 16 characters long"
        );
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;

    let database = config.database.database(&config.data_dir)?;
    create_data_dir(&config.data_dir)?;
    let data_dir_lock = lock_data_dir(&config.data_dir)?;
    let secret_box = SecretBox::load_or_create(&config.data_dir, config.secret_key.as_deref())?;
    let node_id = node_id(&config)?;
    let store = store::open(&database)
        .await
        .with_context(|| format!("cannot open the database ({})", database.describe()))?;
    if let Database::Sqlite { path } = &database {
        restrict_to_owner(path, 0o600)?;
    }

    let (admin_key_hash, generated_admin_key) =
        admin_key(store.as_ref(), config.admin_key.as_deref()).await?;
    check_secret_key(store.as_ref(), &secret_box).await?;
    let installation_id =
        installation_id(store.as_ref(), config.installation_id.as_deref()).await?;
    ensure_default_project(store.as_ref(), &secret_box).await?;
    ensure_first_owner(store.as_ref(), &config).await?;
    let interrupted = store
        .fail_interrupted_runs(&node_id, chrono::Utc::now().timestamp_millis())
        .await?;
    if interrupted > 0 {
        tracing::warn!(
            runs = interrupted,
            "marked sync runs interrupted by a stopped node as failed"
        );
    }

    let braze = BrazeClient::new(RetryPolicy {
        max_attempts: config.braze_max_attempts.max(1),
        base_delay: Duration::from_millis(config.braze_retry_base_ms),
        max_delay: Duration::from_secs(60),
        rate_limit_floor: Duration::from_millis(config.braze_rate_limit_floor_ms),
        max_rate_limit_wait: Duration::from_secs(config.braze_max_rate_limit_wait_secs),
        request_timeout: Duration::from_secs(config.braze_timeout_secs.max(1)),
    });
    let partner = PartnerSettings {
        name: config.braze_partner_name.clone(),
        api_key: config.braze_partner_api_key.clone(),
        api_key_eu: config.braze_partner_api_key_eu.clone(),
    };
    let engine = Arc::new(
        SyncEngine::new(store.clone(), braze.clone(), secret_box.clone(), partner)
            .with_limits(sync::SyncLimits {
                max_dynamic_syncs_per_project: config.max_dynamic_syncs_per_project,
                max_cohort_members: config.max_cohort_members,
                runs_with_operations: config.runs_with_operations as usize,
            })
            .with_lease(
                node_id.clone(),
                Duration::from_secs(config.sync_lease_secs.max(1)),
            )
            .with_installation_id(installation_id),
    );
    let state = AppState {
        store,
        secrets: secret_box,
        engine: engine.clone(),
        braze,
        admin_key_hash: admin_key_hash.into(),
        allow_custom_braze_url: config.allow_custom_braze_url,
        min_sync_interval: Duration::from_secs(config.min_sync_interval_secs),
        mtu_rules: Arc::new(crate::mtu::ExemptionRules {
            never_qualifying: config.mtu_never_qualifying.clone(),
            partner_outreach: config.mtu_partner_outreach.clone(),
        }),
        login_limiter: Arc::new(crate::accounts::LoginLimiter::new(
            LOGIN_MAX_FAILURES,
            LOGIN_FAILURE_WINDOW,
        )),
        secure_cookies: config.secure_cookies,
        cohort_saves: Arc::default(),
    };

    let addr = listener.local_addr()?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let scheduler = sync::spawn_scheduler(
        engine,
        Duration::from_millis(config.scheduler_tick_ms.max(10)),
        shutdown_rx.clone(),
    );
    let app = api::router(state);
    let http = tokio::spawn(async move {
        let mut shutdown_rx = shutdown_rx;
        // The client address feeds the login rate limit.
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        let result = axum::serve(listener, service)
            .with_graceful_shutdown(async move {
                let _ = shutdown_rx.changed().await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "HTTP server stopped with an error");
        }
    });
    tracing::info!(
        %addr,
        data_dir = %config.data_dir.display(),
        database = %database.describe(),
        node_id = %node_id,
        "cohortbridge started"
    );
    Ok(RunningServer {
        addr,
        generated_admin_key,
        shutdown,
        http,
        scheduler,
        _data_dir_lock: data_dir_lock,
    })
}

/// Resolves the admin key's hash: from the configured key (stored, so a later start without it
/// keeps accepting it), from the store, or from a key generated now (returned so the caller can
/// print it once).
async fn admin_key(
    store: &dyn Store,
    configured: Option<&str>,
) -> anyhow::Result<(String, Option<String>)> {
    if let Some(key) = configured {
        let hash = secrets::hash(key);
        let previous = store.get_setting(ADMIN_KEY_HASH_SETTING).await?;
        if previous.as_deref().is_some_and(|previous| previous != hash) {
            tracing::warn!(
                "the admin key given to serve replaces the stored one; the earlier key no longer works"
            );
        }
        store.put_setting(ADMIN_KEY_HASH_SETTING, &hash).await?;
        return Ok((hash, None));
    }
    if let Some(hash) = store.get_setting(ADMIN_KEY_HASH_SETTING).await? {
        return Ok((hash, None));
    }
    let key = secrets::random_token(24);
    let hash = secrets::hash(&key);
    // Another node starting at the same moment may have stored its key first; then that key
    // is the admin key, and this node prints none.
    let stored = store
        .put_setting_if_absent(ADMIN_KEY_HASH_SETTING, &hash)
        .await?;
    if stored != hash {
        return Ok((stored, None));
    }
    Ok((hash, Some(key)))
}

/// Returns the id that the database recorded on its first start: `configured`, or a random id
/// when none was configured. A later `--installation-id` that differs is ignored with a warning,
/// because changing it would orphan the cohorts already created in Braze.
async fn installation_id(store: &dyn Store, configured: Option<&str>) -> anyhow::Result<String> {
    let proposed = configured
        .map(str::to_owned)
        .unwrap_or_else(|| secrets::random_token(8).to_ascii_lowercase());
    let stored = store
        .put_setting_if_absent(INSTALLATION_ID_SETTING, &proposed)
        .await?;
    if let Some(configured) = configured.filter(|c| *c != stored) {
        tracing::warn!(
            configured,
            recorded = %stored,
            "--installation-id differs from the id this database recorded on its first start; the recorded id stays"
        );
    }
    Ok(stored)
}

/// Checks that this node's encryption key is the one that encrypted the stored secrets, and
/// records a check value on first start.
async fn check_secret_key(store: &dyn Store, secret_box: &SecretBox) -> anyhow::Result<()> {
    let check = secret_box.encrypt(SECRET_KEY_CHECK_TEXT);
    let stored = store
        .put_setting_if_absent(SECRET_KEY_CHECK_SETTING, &check)
        .await?;
    match secret_box.decrypt(&stored) {
        Ok(text) if text == SECRET_KEY_CHECK_TEXT => Ok(()),
        _ => anyhow::bail!(
            "the encryption key does not match the key that encrypted this database's secrets; \
             every node of one database needs the same key: copy secret.key from the first \
             node's data folder, or give all nodes the same --secret-key"
        ),
    }
}

/// Returns the configured node id, or the one kept in the data folder, created on first start.
fn node_id(config: &ServeConfig) -> anyhow::Result<String> {
    if let Some(id) = &config.node_id {
        anyhow::ensure!(
            !id.trim().is_empty(),
            "invalid --node-id {id:?}: it must not be empty"
        );
        return Ok(id.clone());
    }
    let path = config.data_dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read the node id {}", path.display()))
        }
    }
    let id = format!("node-{}", secrets::random_token(6));
    std::fs::write(&path, format!("{id}\n"))
        .with_context(|| format!("cannot write the node id {}", path.display()))?;
    Ok(id)
}

/// The file in the data folder that a running server holds locked.
const LOCK_FILE: &str = "cohortbridge.lock";

/// Locks the data folder for this server.
///
/// A second server on the same folder would share its node id, so each would take the other's
/// sync leases for its own. With SQLite, both would also write one file. The lock is the
/// operating system's advisory file lock. It is released when the process ends in any way,
/// SIGKILL included, so a crash never leaves a stale lock.
fn lock_data_dir(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let lock_path = path.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open the lock file {}", lock_path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another cohortbridge server is running on the data folder {}; stop it first, or give this one a folder of its own with --data-dir",
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => Err(e)
            .with_context(|| format!("cannot lock the data folder {}", lock_path.display())),
    }
}

/// Creates the data folder, readable by its owner only, unless it exists already.
fn create_data_dir(path: &std::path::Path) -> anyhow::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(path)
        .with_context(|| format!("cannot create the data folder {}", path.display()))?;
    restrict_to_owner(path, 0o700)
}

/// Sets Unix permission bits so that other local users cannot read the file or folder.
fn restrict_to_owner(path: &std::path::Path, mode: u32) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot restrict the permissions of {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// Creates the first owner from `--owner-email` and its password when no person has an account.
async fn ensure_first_owner(store: &dyn Store, config: &ServeConfig) -> anyhow::Result<()> {
    let Some(email) = &config.owner_email else {
        return Ok(());
    };
    if !store.list_users().await?.is_empty() {
        return Ok(());
    }
    let password = config
        .owner_password
        .as_deref()
        .context("--owner-email needs the owner's password in COHORTBRIDGE_OWNER_PASSWORD")?;
    crate::api::auth::add_user(store, email, password, "owner")
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the first owner: {e}"))?;
    tracing::info!("created the first owner of the web UI");
    Ok(())
}

async fn ensure_default_project(store: &dyn Store, secret_box: &SecretBox) -> anyhow::Result<()> {
    if !store.list_projects().await?.is_empty() {
        return Ok(());
    }
    let api_secret = secrets::random_token(16);
    let currents_token = secrets::random_token(32);
    let created = store
        .create_first_project(NewProject {
            name: "Default project".into(),
            token: secrets::random_token(16),
            api_secret_enc: secret_box.encrypt(&api_secret),
            api_secret_hash: secrets::hash(&api_secret),
            currents_token_enc: secret_box.encrypt(&currents_token),
            currents_token_hash: secrets::hash(&currents_token),
        })
        .await?;
    if let Some(project) = created {
        tracing::info!(project_id = project.id, "created the default project");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    #[tokio::test]
    async fn given_admin_key_replaces_the_stored_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db.sqlite")).unwrap();
        let (generated_hash, generated) = admin_key(&store, None).await.unwrap();
        let generated = generated.expect("a first start generates a key");
        assert_eq!(generated_hash, secrets::hash(&generated));

        let (given_hash, printed) = admin_key(&store, Some("remembered-key-0123456789"))
            .await
            .unwrap();
        assert_eq!(printed, None);
        assert_eq!(given_hash, secrets::hash("remembered-key-0123456789"));

        // A later start without the flag accepts the given key, not the generated one.
        let (later_hash, printed) = admin_key(&store, None).await.unwrap();
        assert_eq!(printed, None);
        assert_eq!(later_hash, given_hash);
        assert_ne!(later_hash, secrets::hash(&generated));
    }
}
