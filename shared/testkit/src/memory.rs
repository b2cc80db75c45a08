//! In-memory adapters for unit and in-process handler tests.

use async_trait::async_trait;
use domain::events::{Event, EventPage};
use domain::model::*;
use domain::storage::*;
use secrecy::ExposeSecret;
use secrecy::SecretString;
use std::collections::HashMap;
use std::sync::Mutex;

/// Counter items by (tenant, scope, day).
type CounterItems =
    std::collections::BTreeMap<(String, String, String), std::collections::BTreeMap<String, i64>>;

/// All record ports over maps behind one lock.
#[derive(Default)]
pub struct MemoryStore {
    api_keys: Mutex<HashMap<String, ApiKeyRecord>>,
    sessions: Mutex<HashMap<String, ConnectSession>>,
    integrations: Mutex<HashMap<(String, String), Integration>>,
    flows: Mutex<HashMap<String, PendingFlow>>,
    /// When each consumed flow (intent) falls due for the reconciler.
    intent_due: Mutex<HashMap<String, i64>>,
    /// Secret writes taken per second.
    budget: Mutex<HashMap<i64, u32>>,
    /// Connection records as they are stored (JSON), as the DynamoDB
    /// adapter keeps items: leases are attribute updates, not records built.
    connections: Mutex<HashMap<(String, String), serde_json::Value>>,
    custom_providers: Mutex<HashMap<(String, String), CustomProviderRecord>>,
    events: Mutex<std::collections::BTreeMap<(String, String, String), Event>>,
    webhook_endpoints: Mutex<HashMap<(String, String), WebhookEndpoint>>,
    stats: Mutex<CounterItems>,
    provider_deliveries: Mutex<std::collections::HashSet<(String, String, String)>>,
    faults: std::sync::Arc<crate::Faults>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store whose steps follow `faults` (shared with a vault, so one
    /// plan can kill a process between a secret write and a record write).
    pub fn with_faults(faults: std::sync::Arc<crate::Faults>) -> Self {
        Self {
            faults,
            ..Self::default()
        }
    }

    /// This store's fault plan.
    pub fn faults(&self) -> &crate::Faults {
        &self.faults
    }

    /// Every event of every connection, oldest first.
    pub fn all_events(&self) -> Vec<Event> {
        lock(&self.events).values().cloned().collect()
    }

    fn add_events(&self, events: &[Event]) {
        let mut log = lock(&self.events);
        for e in events {
            log.insert(
                (e.tenant_id.clone(), e.connection_id.clone(), e.id.clone()),
                e.clone(),
            );
        }
    }

    /// The counters of a commit's events, as the DynamoDB adapter writes them.
    fn add_tallies(&self, events: &[Event]) {
        let mut stats = lock(&self.stats);
        for (tenant, scope, day, tally) in domain::stats::tallies(events) {
            let item = stats.entry((tenant, scope.key(), day)).or_default();
            for (k, v) in tally.add {
                *item.entry(k).or_default() += v;
            }
            for (k, v) in tally.set {
                item.insert(k, v);
            }
        }
    }

    /// Number of flows not yet consumed.
    pub fn flow_count(&self) -> usize {
        lock(&self.flows)
            .values()
            .filter(|f| f.consumed_at.is_none())
            .count()
    }

    /// Number of consumed flows left as intents (unfinished callbacks).
    pub fn intent_count(&self) -> usize {
        lock(&self.flows)
            .values()
            .filter(|f| f.consumed_at.is_some())
            .count()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait]
impl ApiKeyIssuer for MemoryStore {
    async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        lock(&self.api_keys).insert(key.key_id.clone(), key.clone());
        Ok(())
    }
}

#[async_trait]
impl ApiKeyStore for MemoryStore {
    async fn get_api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        Ok(lock(&self.api_keys).get(key_id).cloned())
    }
}

#[async_trait]
impl SessionIssuer for MemoryStore {
    async fn put_session(&self, session: &ConnectSession) -> Result<(), StoreError> {
        lock(&self.sessions).insert(session.token_sha256.clone(), session.clone());
        Ok(())
    }
}

#[async_trait]
impl SessionReader for MemoryStore {
    async fn get_session(&self, token_sha256: &str) -> Result<Option<ConnectSession>, StoreError> {
        Ok(lock(&self.sessions).get(token_sha256).cloned())
    }
}

#[async_trait]
impl SessionStart for MemoryStore {
    async fn get_session_and_integration(
        &self,
        token_sha256: &str,
        tenant_id: &str,
        integration_id: &str,
    ) -> Result<(Option<ConnectSession>, Option<Integration>), StoreError> {
        Ok((
            self.get_session(token_sha256).await?,
            self.get_integration(tenant_id, integration_id).await?,
        ))
    }
}

#[async_trait]
impl SessionOutcome for MemoryStore {
    async fn record_session_result(
        &self,
        token_sha256: &str,
        result: &SessionResult,
    ) -> Result<(), StoreError> {
        if let Some(s) = lock(&self.sessions).get_mut(token_sha256) {
            s.result = Some(result.clone());
        }
        Ok(())
    }
    async fn spend_session(&self, token_sha256: &str, state: &str) -> Result<bool, StoreError> {
        let mut sessions = lock(&self.sessions);
        let Some(s) = sessions.get_mut(token_sha256) else {
            return Ok(false);
        };
        match &s.spent_by {
            Some(by) => Ok(by == state),
            None => {
                s.spent_by = Some(state.to_string());
                Ok(true)
            }
        }
    }
}

#[async_trait]
impl IntegrationStore for MemoryStore {
    async fn create_integration(&self, i: &Integration) -> Result<(), StoreError> {
        let mut map = lock(&self.integrations);
        let key = (i.tenant_id.clone(), i.id.clone());
        if map.contains_key(&key) {
            return Err(StoreError::AlreadyExists);
        }
        map.insert(key, i.clone());
        Ok(())
    }
    async fn delete_integration(&self, t: &str, id: &str) -> Result<(), StoreError> {
        lock(&self.integrations).remove(&(t.to_string(), id.to_string()));
        Ok(())
    }
    async fn replace_integration(&self, i: &Integration) -> Result<(), StoreError> {
        let mut map = lock(&self.integrations);
        let key = (i.tenant_id.clone(), i.id.clone());
        match map.get(&key) {
            Some(stored) if stored.revision + 1 == i.revision => {}
            _ => return Err(StoreError::Conflict),
        }
        map.insert(key, i.clone());
        Ok(())
    }
}

#[async_trait]
impl IntegrationReader for MemoryStore {
    async fn get_integration(&self, t: &str, id: &str) -> Result<Option<Integration>, StoreError> {
        Ok(lock(&self.integrations)
            .get(&(t.to_string(), id.to_string()))
            .cloned())
    }
}

#[async_trait]
impl IntegrationCatalog for MemoryStore {
    async fn list_integrations(&self, t: &str) -> Result<Vec<Integration>, StoreError> {
        let mut v: Vec<_> = lock(&self.integrations)
            .values()
            .filter(|i| i.tenant_id == t)
            .cloned()
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(v)
    }
}

#[async_trait]
impl CustomProviderStore for MemoryStore {
    async fn create_custom_provider(&self, p: &CustomProviderRecord) -> Result<(), StoreError> {
        let mut map = lock(&self.custom_providers);
        let key = (p.tenant_id.clone(), p.id.clone());
        if map.contains_key(&key) {
            return Err(StoreError::AlreadyExists);
        }
        map.insert(key, p.clone());
        Ok(())
    }
    async fn list_custom_providers(
        &self,
        t: &str,
    ) -> Result<Vec<CustomProviderRecord>, StoreError> {
        let mut v: Vec<_> = lock(&self.custom_providers)
            .values()
            .filter(|p| p.tenant_id == t)
            .cloned()
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(v)
    }
    async fn delete_custom_provider(&self, t: &str, id: &str) -> Result<(), StoreError> {
        lock(&self.custom_providers).remove(&(t.to_string(), id.to_string()));
        Ok(())
    }
}

#[async_trait]
impl CustomProviderReader for MemoryStore {
    async fn get_custom_provider(
        &self,
        t: &str,
        id: &str,
    ) -> Result<Option<CustomProviderRecord>, StoreError> {
        Ok(lock(&self.custom_providers)
            .get(&(t.to_string(), id.to_string()))
            .cloned())
    }
}

#[async_trait]
impl FlowStarter for MemoryStore {
    async fn put_flow(&self, flow: &PendingFlow) -> Result<(), StoreError> {
        if !flow.session_sha256.is_empty() {
            // As the table's transaction: the session must be there, unspent.
            match lock(&self.sessions).get_mut(&flow.session_sha256) {
                Some(s) if s.spent_by.is_none() => {
                    s.flow_until = Some(flow.expires_at);
                    s.result = None;
                }
                _ => return Err(StoreError::Conflict),
            }
        }
        lock(&self.flows).insert(flow.state_sha256.clone(), flow.clone());
        Ok(())
    }
}

#[async_trait]
impl FlowStore for MemoryStore {
    async fn take_flow(
        &self,
        state_sha256: &str,
        binding_sha256: &str,
        now: i64,
        intent_until: i64,
    ) -> Result<Option<PendingFlow>, StoreError> {
        let mut map = lock(&self.flows);
        match map.get_mut(state_sha256) {
            Some(f) if f.binding_sha256 == binding_sha256 && f.consumed_at.is_none() => {
                let taken = f.clone();
                f.consumed_at = Some(now);
                f.pkce_verifier = SecretString::from(String::new());
                lock(&self.intent_due).insert(state_sha256.into(), intent_until);
                Ok(Some(taken))
            }
            _ => Ok(None),
        }
    }
    async fn record_intent(&self, state_sha256: &str, intent: &str) -> Result<(), StoreError> {
        self.faults.at("record_intent").await?;
        match lock(&self.flows).get_mut(state_sha256) {
            Some(f) => {
                f.intent = Some(intent.into());
                Ok(())
            }
            None => Err(StoreError::Conflict),
        }
    }
    async fn finish_flow(&self, state_sha256: &str) -> Result<(), StoreError> {
        self.faults.at("finish_flow").await?;
        lock(&self.flows).remove(state_sha256);
        lock(&self.intent_due).remove(state_sha256);
        Ok(())
    }
    async fn burn_flow(&self, state_sha256: &str) -> Result<Option<PendingFlow>, StoreError> {
        self.faults.at("burn_flow").await?;
        let mut flows = lock(&self.flows);
        match flows.get(state_sha256) {
            Some(f) if f.consumed_at.is_none() => Ok(flows.remove(state_sha256)),
            _ => Ok(None),
        }
    }
}

#[async_trait]
impl IntentSweep for MemoryStore {
    async fn due_intents(&self, until: i64, limit: usize) -> Result<Vec<PendingFlow>, StoreError> {
        let due = lock(&self.intent_due).clone();
        let flows = lock(&self.flows);
        let mut v: Vec<_> = due
            .iter()
            .filter(|(_, d)| **d <= until)
            .filter_map(|(k, _)| flows.get(k).cloned())
            .collect();
        v.sort_by(|a, b| a.state_sha256.cmp(&b.state_sha256));
        v.truncate(limit);
        Ok(v)
    }
}

#[async_trait]
impl Counters for MemoryStore {
    async fn add_counts(&self, events: &[Event]) -> Result<(), StoreError> {
        self.add_tallies(events);
        Ok(())
    }
}

#[async_trait]
impl StatsReader for MemoryStore {
    async fn stats_days(
        &self,
        t: &str,
        scope: &domain::stats::Scope,
        from: &str,
        to: &str,
    ) -> Result<Vec<domain::stats::Day>, StoreError> {
        let key = scope.key();
        Ok(lock(&self.stats)
            .iter()
            .filter(|((tt, s, d), _)| {
                tt == t && *s == key && d.as_str() >= from && d.as_str() <= to
            })
            .map(|((_, _, d), c)| (d.clone(), c.clone()))
            .collect())
    }
}

#[async_trait]
impl EventWriter for MemoryStore {
    async fn put_events(&self, events: &[Event]) -> Result<(), StoreError> {
        self.add_events(events);
        Ok(())
    }
}

#[async_trait]
impl AuditLog for MemoryStore {
    async fn record_read(&self, event: &Event) -> Result<(), StoreError> {
        self.faults.at("record_read").await?;
        self.add_events(std::slice::from_ref(event));
        Ok(())
    }
}

#[async_trait]
impl OperationLog for MemoryStore {
    async fn record_operation(&self, events: &[Event]) -> Result<(), StoreError> {
        self.add_events(events);
        self.add_tallies(events);
        Ok(())
    }
}

#[async_trait]
impl EventLog for MemoryStore {
    async fn get_event(&self, t: &str, c: &str, id: &str) -> Result<Option<Event>, StoreError> {
        Ok(lock(&self.events)
            .get(&(t.to_string(), c.to_string(), id.to_string()))
            .cloned())
    }
    async fn list_events(
        &self,
        t: &str,
        c: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        let log = lock(&self.events);
        let mut events: Vec<Event> = log
            .values()
            .rev()
            .filter(|e| e.tenant_id == t && e.connection_id == c)
            .filter(|e| before.is_none_or(|b| e.id.as_str() < b))
            .take(limit + 1)
            .cloned()
            .collect();
        let more = events.len() > limit;
        events.truncate(limit);
        let next = more.then(|| events.last().map(|e| e.id.clone())).flatten();
        Ok(EventPage { events, next })
    }
}

#[async_trait]
impl WebhookEndpointAdmin for MemoryStore {
    async fn create_webhook_endpoint(&self, e: &WebhookEndpoint) -> Result<(), StoreError> {
        let mut map = lock(&self.webhook_endpoints);
        let key = (e.tenant_id.clone(), e.id.clone());
        if map.contains_key(&key) {
            return Err(StoreError::AlreadyExists);
        }
        map.insert(key, e.clone());
        Ok(())
    }
    async fn delete_webhook_endpoint(&self, t: &str, id: &str) -> Result<(), StoreError> {
        lock(&self.webhook_endpoints).remove(&(t.to_string(), id.to_string()));
        Ok(())
    }
}

#[async_trait]
impl WebhookEndpoints for MemoryStore {
    async fn get_webhook_endpoint(
        &self,
        t: &str,
        id: &str,
    ) -> Result<Option<WebhookEndpoint>, StoreError> {
        Ok(lock(&self.webhook_endpoints)
            .get(&(t.to_string(), id.to_string()))
            .cloned())
    }
    async fn list_webhook_endpoints(&self, t: &str) -> Result<Vec<WebhookEndpoint>, StoreError> {
        let mut v: Vec<_> = lock(&self.webhook_endpoints)
            .values()
            .filter(|e| e.tenant_id == t)
            .cloned()
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(v)
    }
    async fn replace_webhook_endpoint(&self, e: &WebhookEndpoint) -> Result<(), StoreError> {
        let mut map = lock(&self.webhook_endpoints);
        let key = (e.tenant_id.clone(), e.id.clone());
        match map.get(&key) {
            None => Err(StoreError::Missing),
            Some(old) if old.version != e.version - 1 => Err(StoreError::Conflict),
            Some(_) => {
                map.insert(key, e.clone());
                Ok(())
            }
        }
    }
}

/// A stored record read back.
fn record(v: &serde_json::Value) -> Connection {
    serde_json::from_value(v.clone()).expect("a stored record reads back")
}

fn stored(c: &Connection) -> serde_json::Value {
    serde_json::to_value(c).expect("a record serializes")
}

/// Whether `stored` satisfies `fence`.
fn fence_holds(stored: Option<&Connection>, fence: Fence<'_>) -> Result<(), StoreError> {
    match (fence, stored) {
        (Fence::Absent, None) => Ok(()),
        (Fence::Absent, Some(_)) => Err(StoreError::AlreadyExists),
        (Fence::Version(v), Some(c)) if c.version() == v => Ok(()),
        (Fence::Leased { version, owner }, Some(c))
            if c.version() == version && c.lease_owner() == Some(owner) =>
        {
            Ok(())
        }
        _ => Err(StoreError::Conflict),
    }
}

#[async_trait]
impl ProviderWebhookStore for MemoryStore {
    async fn connections_by_match(
        &self,
        key: &str,
        limit: usize,
    ) -> Result<Vec<Connection>, StoreError> {
        let mut out: Vec<Connection> = lock(&self.connections)
            .values()
            .map(record)
            .filter(|c| c.webhook_match() == Some(key))
            .collect();
        out.sort_by(|a, b| a.id().cmp(b.id()));
        out.truncate(limit);
        Ok(out)
    }
    async fn record_provider_delivery(
        &self,
        t: &str,
        integration: &str,
        keys: &[String],
        _expires_at: i64,
        events: &[Event],
    ) -> Result<bool, StoreError> {
        let mut seen = lock(&self.provider_deliveries);
        let key = |k: &String| (t.to_string(), integration.to_string(), k.clone());
        if keys.iter().any(|k| seen.contains(&key(k))) {
            return Ok(false);
        }
        seen.extend(keys.iter().map(key));
        self.add_events(events);
        Ok(true)
    }
}

impl MemoryStore {
    /// Puts a record as it is, bypassing the state machine: for tests that
    /// need a record in a state no transition makes (a test kit door, not
    /// a port).
    pub fn seed_connection(&self, c: &Connection) {
        lock(&self.connections).insert((c.tenant_id().to_string(), c.id().to_string()), stored(c));
    }
}

#[async_trait]
impl ConnectionStore for MemoryStore {
    async fn commit(&self, write: &RecordWrite) -> Result<(), StoreError> {
        self.faults.at("record_commit").await?;
        let mut map = lock(&self.connections);
        match write.op() {
            RecordOp::Put { record: c, fence } => {
                let key = (c.tenant_id().to_string(), c.id().to_string());
                fence_holds(map.get(&key).map(record).as_ref(), fence)?;
                map.insert(key, stored(c));
            }
            RecordOp::Delete {
                tenant_id,
                id,
                fence,
            } => {
                let key = (tenant_id.to_string(), id.to_string());
                let Some(current) = map.get(&key).map(record) else {
                    return Ok(());
                };
                fence_holds(Some(&current), fence)?;
                map.remove(&key);
            }
        }
        self.add_events(write.events());
        Ok(())
    }
    async fn get_connection(&self, t: &str, id: &str) -> Result<Option<Connection>, StoreError> {
        Ok(lock(&self.connections)
            .get(&(t.to_string(), id.to_string()))
            .map(record))
    }
    async fn try_lease(&self, req: &LeaseRequest) -> Result<Lease, StoreError> {
        self.faults.at("lease").await?;
        let mut map = lock(&self.connections);
        let Some(v) = map.get_mut(&(req.tenant_id().to_string(), req.id().to_string())) else {
            return Ok(Lease::Missing);
        };
        let c = record(v);
        if c.lease_until().is_some_and(|u| u >= req.now()) {
            return Ok(Lease::Busy(c));
        }
        // The adapter's conditional update: lease fields and version.
        v["lease_owner"] = serde_json::json!(req.owner());
        v["lease_until"] = serde_json::json!(req.until());
        v["version"] = serde_json::json!(c.version() + 1);
        Ok(Lease::Acquired(record(v)))
    }
    async fn release_lease(&self, rel: &LeaseRelease) -> Result<(), StoreError> {
        let mut map = lock(&self.connections);
        if let Some(v) = map.get_mut(&(rel.tenant_id().to_string(), rel.id().to_string())) {
            let c = record(v);
            if c.lease_owner() == Some(rel.owner()) {
                let o = v.as_object_mut().expect("a record is an object");
                o.remove("lease_owner");
                o.remove("lease_until");
                o.insert("version".into(), serde_json::json!(c.version() + 1));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl ConnectionRemoval for MemoryStore {
    async fn delete_record(&self, write: &RecordWrite) -> Result<(), StoreError> {
        self.commit(write).await
    }
}

#[async_trait]
impl ConnectionIndex for MemoryStore {
    async fn list_connections(&self, t: &str) -> Result<Vec<Connection>, StoreError> {
        let mut v: Vec<_> = lock(&self.connections)
            .values()
            .map(record)
            .filter(|c| c.tenant_id() == t)
            .collect();
        v.sort_by(|a, b| a.id().cmp(b.id()));
        Ok(v)
    }
    async fn list_connections_page(
        &self,
        t: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ConnectionPage, StoreError> {
        let all = self.list_connections(t).await?;
        let mut rest: Vec<_> = all
            .into_iter()
            .filter(|c| after.is_none_or(|a| c.id() > a))
            .collect();
        let more = rest.len() > limit;
        rest.truncate(limit);
        let next = if more {
            rest.last().map(|c| c.id().to_string())
        } else {
            None
        };
        Ok(ConnectionPage {
            connections: rest,
            next,
        })
    }
}

#[async_trait]
impl DueConnections for MemoryStore {
    async fn due_connections(
        &self,
        until: i64,
        t: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut v: Vec<_> = lock(&self.connections)
            .values()
            .map(record)
            .filter(|c| {
                c.due_at().is_some_and(|d| d <= until) && t.is_none_or(|t| c.tenant_id() == t)
            })
            .map(|c| {
                (
                    c.due_at().unwrap_or(0),
                    c.tenant_id().to_string(),
                    c.id().to_string(),
                )
            })
            .collect();
        v.sort();
        Ok(v.into_iter()
            .take(limit)
            .map(|(_, t, id)| (t, id))
            .collect())
    }
}

#[async_trait]
impl WriteBudget for MemoryStore {
    async fn take_secret_write(&self, second: i64, limit: u32) -> Result<bool, StoreError> {
        let mut budget = lock(&self.budget);
        let n = budget.entry(second).or_default();
        if *n >= limit {
            return Ok(false);
        }
        *n += 1;
        Ok(true)
    }
}

/// One secret: its versions by name, and which one is current.
#[derive(Default, Clone)]
struct MemorySecret {
    versions: HashMap<String, String>,
    current: String,
}

/// How the memory vault's reads fail, when a test makes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFault {
    /// As throttled, or timed out.
    Unavailable,
    /// As refused by IAM.
    Denied,
}

/// Secrets in a map, with versions as Secrets Manager keeps them. As in
/// Secrets Manager, a deleted name stays taken until its deletion settles
/// (a forced deletion is asynchronous: a `CreateSecret` of the same name
/// meanwhile is refused), which a test ends with
/// [`MemoryVault::settle_deletions`].
#[derive(Default)]
pub struct MemoryVault {
    secrets: Mutex<HashMap<String, MemorySecret>>,
    deleting: Mutex<std::collections::HashSet<String>>,
    reads: std::sync::atomic::AtomicUsize,
    reads_fault: Mutex<Option<ReadFault>>,
    reads_hang: std::sync::atomic::AtomicBool,
    writes: std::sync::atomic::AtomicUsize,
    faults: std::sync::Arc<crate::Faults>,
}

impl MemoryVault {
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes a new current version at once and answers its name (tests
    /// use it to play a concurrent writer, or to seed a secret).
    pub fn put_now(&self, name: &str, value: &str) -> String {
        let mut map = lock(&self.secrets);
        let s = map.entry(name.into()).or_default();
        let version = domain::crypto::version_token(&domain::crypto::random_token(16));
        s.versions.insert(version.clone(), value.into());
        s.current = version.clone();
        version
    }

    /// How many secret values were read (a read of Secrets Manager each).
    pub fn reads(&self) -> usize {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// From now on every read fails so (or, with `None`, none does).
    pub fn fail_reads(&self, fault: Option<ReadFault>) {
        *lock(&self.reads_fault) = fault;
    }

    /// From now on every read never answers (as a call that hangs).
    pub fn hang_reads(&self, hang: bool) {
        self.reads_hang
            .store(hang, std::sync::atomic::Ordering::Relaxed);
    }

    async fn count_read(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        self.reads.fetch_add(1, Relaxed);
        if self.reads_hang.load(Relaxed) {
            std::future::pending::<()>().await;
        }
        match *lock(&self.reads_fault) {
            None => Ok(()),
            Some(ReadFault::Unavailable) => Err(StoreError::Unavailable("reads throttled".into())),
            Some(ReadFault::Denied) => Err(StoreError::AccessDenied("reads denied".into())),
        }
    }

    /// How many token writes were tried (failed ones included).
    pub fn writes(&self) -> usize {
        self.writes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Deleted names become free again.
    pub fn settle_deletions(&self) {
        lock(&self.deleting).clear();
    }

    /// A vault whose token writes follow `faults`.
    pub fn with_faults(faults: std::sync::Arc<crate::Faults>) -> Self {
        Self {
            faults,
            ..Self::default()
        }
    }

    async fn count_write(&self) -> Result<(), StoreError> {
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.faults.at("secret_write").await
    }

    fn create(&self, name: &str, value: &SecretString, version: &str) -> Result<(), StoreError> {
        if lock(&self.deleting).contains(name) {
            return Err(StoreError::Backend(
                "a secret with this name is already scheduled for deletion".into(),
            ));
        }
        let mut map = lock(&self.secrets);
        if map.contains_key(name) {
            return Err(StoreError::AlreadyExists);
        }
        let mut s = MemorySecret::default();
        add_version(&mut s, version, value.expose_secret())?;
        map.insert(name.into(), s);
        Ok(())
    }

    fn put_version(
        &self,
        name: &str,
        value: &SecretString,
        version: &str,
    ) -> Result<(), StoreError> {
        let mut map = lock(&self.secrets);
        let s = map.get_mut(name).ok_or(StoreError::Missing)?;
        add_version(s, version, value.expose_secret())
    }

    async fn read(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<(String, SecretString)>, StoreError> {
        self.count_read().await?;
        let map = lock(&self.secrets);
        Ok(map.get(name).and_then(|s| {
            let v = version.unwrap_or(&s.current);
            s.versions
                .get(v)
                .map(|value| (v.to_string(), SecretString::from(value.clone())))
        }))
    }

    fn delete(&self, name: &str) {
        if lock(&self.secrets).remove(name).is_some() {
            lock(&self.deleting).insert(name.to_string());
        }
    }

    /// Names of the stored secrets, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<_> = lock(&self.secrets).keys().cloned().collect();
        v.sort();
        v
    }

    /// How many versions `name` has (0 when it does not exist).
    pub fn version_count(&self, name: &str) -> usize {
        lock(&self.secrets)
            .get(name)
            .map_or(0, |s| s.versions.len())
    }
}

/// Adds `version` as the current one; the same version twice must carry the
/// same value (as Secrets Manager's idempotent `ClientRequestToken`).
fn add_version(s: &mut MemorySecret, version: &str, value: &str) -> Result<(), StoreError> {
    match s.versions.get(version) {
        Some(v) if v == value => return Ok(()),
        Some(_) => {
            return Err(StoreError::Backend(
                "version exists with another value".into(),
            ));
        }
        None => {}
    }
    s.versions.insert(version.into(), value.into());
    s.current = version.into();
    Ok(())
}

#[async_trait]
impl SecretVault for MemoryVault {
    async fn create_secret(
        &self,
        name: &SecretName,
        value: &SecretString,
        _tags: &[(&str, &str)],
        version: &str,
    ) -> Result<(), StoreError> {
        self.create(name.as_str(), value, version)
    }
    async fn put_secret_version(
        &self,
        name: &SecretName,
        value: &SecretString,
        version: &str,
    ) -> Result<(), StoreError> {
        self.put_version(name.as_str(), value, version)
    }
    async fn delete_secret(&self, name: &SecretName) -> Result<(), StoreError> {
        self.delete(name.as_str());
        Ok(())
    }
}

#[async_trait]
impl SecretReader for MemoryVault {
    async fn get_secret(&self, name: &str) -> Result<Option<SecretString>, StoreError> {
        Ok(self.read(name, None).await?.map(|(_, v)| v))
    }
}

#[async_trait]
impl TokenCreator for MemoryVault {
    async fn create_tokens(&self, w: &TokenWrite) -> Result<(), StoreError> {
        self.count_write().await?;
        self.create(w.name(), w.value(), w.version())
    }
}

#[async_trait]
impl TokenVault for MemoryVault {
    async fn put_tokens(&self, w: &TokenWrite) -> Result<(), StoreError> {
        self.count_write().await?;
        self.put_version(w.name(), w.value(), w.version())
    }
    async fn read_tokens(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<SecretString>, StoreError> {
        Ok(self.read(name, version).await?.map(|(_, v)| v))
    }
    async fn read_current_tokens(
        &self,
        name: &str,
    ) -> Result<Option<(String, SecretString)>, StoreError> {
        self.read(name, None).await
    }
}

#[async_trait]
impl TokenDeleter for MemoryVault {
    async fn delete_tokens(&self, d: &TokenDelete) -> Result<(), StoreError> {
        self.faults.at("secret_delete").await?;
        self.delete(d.name());
        Ok(())
    }
}
