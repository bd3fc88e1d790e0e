//! The consent pages (OAuth 2.1 authorization code flow with PKCE, as the
//! client of the user's identity provider), served on the control plane's
//! HTTP listener beside the JWK Set:
//!
//! - `GET /consent?agent=<id>&scope=<scopes>` — the user signs in at the
//!   provider (S256 PKCE, `state`, `nonce`), then sees which agent (type,
//!   owner, version) asks for which scopes and approves a subset, for one
//!   agent or every agent of its type, for a bounded time;
//! - `GET /consent/callback` — where the provider sends the browser back;
//! - `POST /consent/approve` — stores the grant;
//! - `GET /grants`, `POST /grants/revoke` — the user's grants, and
//!   revoking one (which ends the sessions issued under it);
//! - `POST /signout`.
//!
//! Forms carry a per-browser token compared in constant time, cookies are
//! `HttpOnly` and `SameSite=Lax` (and `Secure` behind https), pages forbid
//! framing and scripts, and every value shown is escaped.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use subtle::ConstantTimeEq;
use warden_shared::agent::{AgentId, AgentStatus};
use warden_shared::scope::{self, Scope};

use crate::delegation::{Provider, browser, form_encode};
use crate::grants::{self, By};
use crate::state::State;
use crate::store::{Grant, Grantee};

/// The cookie naming a signed-in browser.
const COOKIE: &str = "warden_consent";
/// Largest form accepted.
const MAX_FORM: usize = 16 * 1024;
/// Most scopes one consent names.
const MAX_SCOPES: usize = 32;
/// The lifetimes a user may choose, seconds (cut to `max_grant_days`).
const DURATIONS: [(i64, &str); 5] = [
    (3600, "1 hour"),
    (86_400, "1 day"),
    (7 * 86_400, "7 days"),
    (30 * 86_400, "30 days"),
    (365 * 86_400, "1 year"),
];

/// The pages' routes.
pub fn routes() -> Router<Arc<State>> {
    Router::new()
        .route("/consent", get(consent))
        .route("/consent/callback", get(callback))
        .route("/consent/approve", post(approve))
        .route("/grants", get(list))
        .route("/grants/revoke", post(revoke))
        .route("/signout", post(sign_out))
}

/// `&`, `<`, `>`, `"` and `'` escaped for HTML text and attributes.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn secure_headers(r: &mut Response) {
    let h = r.headers_mut();
    for (k, v) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
}

/// A page.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{t} — Warden</title><style>\
         body{{font-family:system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem;color:#222}}\
         table{{border-collapse:collapse}}td,th{{padding:.3rem .6rem;text-align:left;border-bottom:1px solid #ddd}}\
         code{{background:#f3f3f3;padding:0 .2rem}}button{{margin:.3rem .3rem 0 0}}.muted{{color:#777}}\
         </style></head><body><h1>{t}</h1>{body}</body></html>",
        t = esc(title)
    );
    let mut r = (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response();
    secure_headers(&mut r);
    r
}

fn problem(status: StatusCode, why: &str) -> Response {
    page(
        status,
        "Cannot continue",
        &format!("<p id=\"error\">{}</p>", esc(why)),
    )
}

fn redirect(to: &str) -> Response {
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response();
    secure_headers(&mut r);
    r
}

/// The query's or form's pairs (a key may repeat).
fn pairs(text: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(text)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .take(256)
        .collect()
}

fn one<'a>(p: &'a [(String, String)], key: &str) -> Option<&'a str> {
    p.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

fn signed_in(state: &State, headers: &HeaderMap) -> Option<(String, browser::Browser)> {
    let c = cookie(headers)?;
    let b = state.delegation.browsers.browser(&c)?;
    Some((c, b))
}

/// The form's `csrf` field is the browser's.
fn csrf_ok(form: &[(String, String)], b: &browser::Browser) -> bool {
    one(form, "csrf").is_some_and(|c| bool::from(c.as_bytes().ct_eq(b.csrf.as_bytes())))
}

fn store_failed(e: &crate::store::Error) -> Response {
    tracing::error!(error = %e, "store failure on the consent pages");
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "The control plane's store failed; try again later.",
    )
}

/// Sends the browser to sign in at `provider` (or to choose one), coming
/// back to `return_to` (a path of ours).
async fn sign_in(state: &State, query: &[(String, String)], return_to: &str) -> Response {
    let providers = state.delegation.providers();
    let chosen = match (one(query, "provider"), providers) {
        (_, []) => {
            return problem(
                StatusCode::NOT_FOUND,
                "No identity provider is configured on this control plane.",
            );
        }
        (Some(name), _) => state.delegation.provider(name),
        (None, [only]) => Some(only),
        (None, _) => None,
    };
    let Some(provider) = chosen else {
        let sep = if return_to.contains('?') { '&' } else { '?' };
        let links: String = providers
            .iter()
            .map(|p| {
                format!(
                    "<li><a href=\"{}{sep}provider={}\">{}</a></li>",
                    esc(return_to),
                    esc(&form_encode(&p.config().name)),
                    esc(&p.config().name)
                )
            })
            .collect();
        return page(
            StatusCode::OK,
            "Sign in",
            &format!("<p>Sign in with:</p><ul>{links}</ul>"),
        );
    };
    match authorize_url(state, provider, return_to).await {
        Ok(url) => redirect(&url),
        Err(r) => r,
    }
}

async fn authorize_url(
    state: &State,
    provider: &Provider,
    return_to: &str,
) -> Result<String, Response> {
    let c = provider.config();
    let Some(client_id) = &c.client_id else {
        return Err(problem(
            StatusCode::NOT_FOUND,
            &format!(
                "Identity provider {} has no client_id configured for consent.",
                c.name
            ),
        ));
    };
    let endpoints = provider.endpoints().await.map_err(|e| {
        tracing::warn!(error = %e, "identity provider unavailable for sign-in");
        problem(
            StatusCode::BAD_GATEWAY,
            &format!(
                "Identity provider {} cannot be reached; try again later.",
                c.name
            ),
        )
    })?;
    let Some(authorize) = &endpoints.authorization else {
        return Err(problem(
            StatusCode::BAD_GATEWAY,
            &format!(
                "Identity provider {} publishes no authorization endpoint.",
                c.name
            ),
        ));
    };
    let Some((st, login)) = state.delegation.browsers.start(&c.name, return_to) else {
        return Err(problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many sign-ins are under way; try again in a few minutes.",
        ));
    };
    let sep = if authorize.query().is_some() {
        '&'
    } else {
        '?'
    };
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", &callback_url(state))
        .append_pair("scope", "openid profile email")
        .append_pair("state", &st)
        .append_pair("nonce", &login.nonce)
        .append_pair("code_challenge", &browser::challenge(&login.verifier))
        .append_pair("code_challenge_method", "S256")
        .finish();
    Ok(format!("{authorize}{sep}{query}"))
}

fn callback_url(state: &State) -> String {
    format!("{}/consent/callback", state.delegation.public_url())
}

fn set_cookie(state: &State, value: &str, max_age: u64) -> HeaderValue {
    let secure = if state.delegation.public_url().starts_with("https:") {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("warden_consent=; Max-Age=0"))
}

/// The agent a consent names, and the requested scopes it is allowed
/// (each cut to its allowance).
struct Asked {
    agent: crate::store::Agent,
    scopes: Vec<Scope>,
    refused: Vec<String>,
}

async fn asked(state: &State, agent: &str, scope_text: &str) -> Result<Asked, Response> {
    let bad = |why: String| problem(StatusCode::BAD_REQUEST, &why);
    let id = AgentId::new(agent).map_err(|e| bad(format!("Agent {agent:?}: {e}")))?;
    let agent = state
        .store
        .get_agent(&id)
        .await
        .map_err(|e| store_failed(&e))?
        .filter(|a| {
            a.status == AgentStatus::Active && a.expires_at.is_none_or(|t| t > crate::now_unix())
        })
        .ok_or_else(|| bad(format!("Agent {id} is not registered or not active.")))?;
    let names: Vec<String> = scope_text
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if names.len() > MAX_SCOPES {
        return Err(bad(format!("At most {MAX_SCOPES} scopes.")));
    }
    let requested = Scope::parse_all(&names).map_err(|e| bad(format!("Scopes: {e}")))?;
    let allowed = Scope::parse_all(&agent.allowed_scopes).map_err(|e| {
        tracing::error!(agent = %agent.id, error = %e, "stored allowed_scopes do not parse");
        problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The agent's record is invalid.",
        )
    })?;
    let mut scopes = Vec::new();
    let mut refused = Vec::new();
    for r in requested {
        let cut = scope::intersect(std::slice::from_ref(&r), &allowed)
            .map_err(|e| bad(format!("Scopes: {e}")))?;
        if cut.is_empty() {
            refused.push(r.to_string());
        }
        scopes.extend(cut);
    }
    scopes.sort();
    scopes.dedup();
    Ok(Asked {
        agent,
        scopes,
        refused,
    })
}

fn durations(state: &State) -> Vec<(i64, &'static str)> {
    let max = i64::from(state.config.max_grant_days) * 86_400;
    let mut d: Vec<(i64, &'static str)> = DURATIONS
        .iter()
        .copied()
        .filter(|(s, _)| *s <= max)
        .collect();
    if d.last().is_none_or(|(s, _)| *s < max) && max < 365 * 86_400 {
        d.push((max, "the longest allowed"));
    }
    d
}

async fn consent(
    AxState(state): AxState<Arc<State>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let query = pairs(q.unwrap_or_default().as_bytes());
    let agent = one(&query, "agent").unwrap_or_default().to_owned();
    let scope_text = one(&query, "scope").unwrap_or_default().to_owned();
    let asked = match asked(&state, &agent, &scope_text).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Some((_, b)) = signed_in(&state, &headers) else {
        let back = format!(
            "/consent?agent={}&scope={}",
            form_encode(&agent),
            form_encode(&scope_text)
        );
        return sign_in(&state, &query, &back).await;
    };
    let a = &asked.agent;
    let mut body = format!(
        "<p>Signed in as <code id=\"user\">{}</code>.</p>\
         <p>Agent <strong id=\"agent\">{}</strong> asks to act for you.</p>\
         <table><tr><th>Type</th><td id=\"agent-type\">{}</td></tr>\
         <tr><th>Owner</th><td id=\"agent-owner\">{}</td></tr>\
         <tr><th>Version</th><td id=\"agent-version\">{}</td></tr></table>",
        esc(&b.user),
        esc(a.id.as_str()),
        esc(&a.agent_type),
        esc(&a.owner),
        esc(&a.version)
    );
    if !asked.refused.is_empty() {
        body.push_str(&format!(
            "<p class=\"muted\">Not available to this agent, whatever you approve: {}</p>",
            esc(&asked.refused.join(" "))
        ));
    }
    if asked.scopes.is_empty() {
        body.push_str("<p id=\"nothing\">This agent may hold none of the scopes it asks for, so there is nothing to approve.</p>");
        return page(StatusCode::OK, "Nothing to approve", &body);
    }
    body.push_str(&format!(
        "<form method=\"post\" action=\"/consent/approve\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <input type=\"hidden\" name=\"agent\" value=\"{}\">\
         <p>Approve these scopes (untick any you do not want to give):</p><ul>",
        esc(&b.csrf),
        esc(a.id.as_str())
    ));
    for s in &asked.scopes {
        let s = s.to_string();
        body.push_str(&format!(
            "<li><label><input type=\"checkbox\" name=\"scope\" value=\"{0}\" checked> <code>{0}</code></label></li>",
            esc(&s)
        ));
    }
    body.push_str("</ul><p>For: <select name=\"duration\" id=\"duration\">");
    for (secs, label) in durations(&state) {
        let selected = if secs == 86_400 { " selected" } else { "" };
        body.push_str(&format!(
            "<option value=\"{secs}\"{selected}>{label}</option>"
        ));
    }
    body.push_str(&format!(
        "</select></p><p><label><input type=\"radio\" name=\"grantee\" value=\"agent\" checked> this agent only</label><br>\
         <label><input type=\"radio\" name=\"grantee\" value=\"type\"> any agent of type <code>{}</code></label></p>\
         <button type=\"submit\" name=\"decision\" value=\"approve\" id=\"approve\">Approve</button>\
         <button type=\"submit\" name=\"decision\" value=\"deny\" id=\"deny\">Deny</button></form>\
         <p><a href=\"/grants\">Your grants</a></p>",
        esc(&a.agent_type)
    ));
    page(StatusCode::OK, "Approve access", &body)
}

async fn callback(AxState(state): AxState<Arc<State>>, RawQuery(q): RawQuery) -> Response {
    let query = pairs(q.unwrap_or_default().as_bytes());
    let Some(login) = one(&query, "state").and_then(|s| state.delegation.browsers.finish(s)) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "This sign-in is unknown or has expired; start again from the consent link.",
        );
    };
    if let Some(err) = one(&query, "error") {
        let why: String = err.chars().take(64).collect();
        return problem(
            StatusCode::FORBIDDEN,
            &format!("The identity provider did not sign you in ({why})."),
        );
    }
    let Some(code) = one(&query, "code").filter(|c| !c.is_empty() && c.len() <= 2048) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "The identity provider sent no code.",
        );
    };
    let Some(provider) = state.delegation.provider(&login.provider) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "That identity provider is no longer configured.",
        );
    };
    let user = match exchange_code(&state, provider, code, &login).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let Some(cookie) = state
        .delegation
        .browsers
        .sign_in(&user.qualified(), &provider.config().name)
    else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many people are signed in; try again in a few minutes.",
        );
    };
    tracing::info!(user = %user.qualified(), provider = %provider.config().name, "user signed in on the consent pages");
    let mut r = redirect(&login.return_to);
    r.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(&state, &cookie, browser::BROWSER_TTL.as_secs()),
    );
    r
}

/// Redeems the authorization code at the provider's token endpoint (with
/// the PKCE verifier) and verifies the ID token it answers with, including
/// its `nonce`.
async fn exchange_code(
    state: &State,
    provider: &Provider,
    code: &str,
    login: &browser::Login,
) -> Result<warden_shared::oidc::User, Response> {
    let c = provider.config();
    let unavailable = |why: String| {
        tracing::warn!(provider = %c.name, error = %why, "code exchange failed");
        problem(
            StatusCode::BAD_GATEWAY,
            &format!(
                "Identity provider {} could not complete the sign-in; try again.",
                c.name
            ),
        )
    };
    let endpoints = provider
        .endpoints()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let token_url = endpoints
        .token
        .as_ref()
        .ok_or_else(|| unavailable("no token endpoint".into()))?;
    let form = {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", &callback_url(state))
            .append_pair("client_id", c.client_id.as_deref().unwrap_or_default())
            .append_pair("code_verifier", &login.verifier);
        if let Some(secret) = provider.client_secret() {
            form.append_pair("client_secret", secret);
        }
        form.finish()
    };
    let (status, body) = provider
        .post_form(token_url, form)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    if !status.is_success() {
        return Err(unavailable(format!("the token endpoint answered {status}")));
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        id_token: Option<String>,
    }
    let id_token = serde_json::from_slice::<Answer>(&body)
        .ok()
        .and_then(|a| a.id_token)
        .ok_or_else(|| unavailable("the token endpoint sent no id_token".into()))?;
    let user = provider
        .verify(&id_token, crate::now_unix())
        .await
        .map_err(|e| {
            tracing::warn!(provider = %c.name, error = %e, "ID token from the code exchange refused");
            problem(StatusCode::FORBIDDEN, &format!("The sign-in was refused: {e}."))
        })?;
    let nonce = user.claims.get("nonce").and_then(serde_json::Value::as_str);
    if !nonce.is_some_and(|n| bool::from(n.as_bytes().ct_eq(login.nonce.as_bytes()))) {
        tracing::warn!(provider = %c.name, "ID token nonce does not match the sign-in");
        return Err(problem(
            StatusCode::FORBIDDEN,
            "The sign-in was refused: the ID token is not for this sign-in.",
        ));
    }
    Ok(user)
}

/// A form posted by a signed-in browser from one of our pages: its
/// fields and the browser; otherwise the page refusing it (`again` says
/// where to start over).
#[allow(
    clippy::result_large_err,
    reason = "the refusal is a page, built once per refused form"
)]
fn posted(
    state: &State,
    headers: &HeaderMap,
    body: &[u8],
    again: &str,
) -> Result<(Vec<(String, String)>, browser::Browser), Response> {
    if body.len() > MAX_FORM {
        return Err(problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "The form is too large.",
        ));
    }
    let form = pairs(body);
    let Some((_, b)) = signed_in(state, headers) else {
        return Err(problem(
            StatusCode::UNAUTHORIZED,
            &format!("You are not signed in; {again}."),
        ));
    };
    if !csrf_ok(&form, &b) {
        return Err(problem(
            StatusCode::FORBIDDEN,
            &format!("This form is not from this page; {again}."),
        ));
    }
    Ok((form, b))
}

async fn approve(AxState(state): AxState<Arc<State>>, headers: HeaderMap, body: Bytes) -> Response {
    let (form, b) = match posted(&state, &headers, &body, "open the consent link again") {
        Ok(p) => p,
        Err(r) => return r,
    };
    let agent = one(&form, "agent").unwrap_or_default();
    if one(&form, "decision") == Some("deny") {
        tracing::info!(user = %b.user, agent, "consent denied");
        return page(
            StatusCode::OK,
            "Nothing granted",
            "<p id=\"denied\">You denied the request; the agent cannot act for you.</p>",
        );
    }
    let chosen: Vec<&str> = form
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.as_str())
        .collect();
    if chosen.is_empty() {
        return problem(StatusCode::BAD_REQUEST, "Tick at least one scope, or deny.");
    }
    // Only what the agent may hold, whatever the form says.
    let asked = match asked(&state, agent, &chosen.join(" ")).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    if asked.scopes.is_empty() {
        return problem(
            StatusCode::BAD_REQUEST,
            "None of those scopes is available to this agent.",
        );
    }
    let Some(duration) = one(&form, "duration")
        .and_then(|d| d.parse::<i64>().ok())
        .filter(|d| durations(&state).iter().any(|(s, _)| s == d))
    else {
        return problem(
            StatusCode::BAD_REQUEST,
            "Choose one of the offered durations.",
        );
    };
    let grantee = match one(&form, "grantee") {
        Some("type") => Grantee::AgentType(asked.agent.agent_type.clone()),
        Some("agent") | None => Grantee::Agent(asked.agent.id.clone()),
        Some(_) => return problem(StatusCode::BAD_REQUEST, "Choose this agent or its type."),
    };
    let now = crate::now_unix();
    let g = Grant {
        id: grants::new_id(),
        user_id: b.user.clone(),
        grantee,
        scopes: asked.scopes.iter().map(ToString::to_string).collect(),
        created_at: now,
        expires_at: now + duration,
        revoked_at: None,
        revoked_by: String::new(),
    };
    if let Err(e) = grants::give(&state, &g).await {
        return store_failed(&e);
    }
    page(
        StatusCode::OK,
        "Access granted",
        &format!(
            "<p id=\"granted\">{} may act for you with <code id=\"scopes\">{}</code> until {} (grant <code id=\"grant\">{}</code>).</p>\
             <p>The agent can now start its session again. <a href=\"/grants\">Your grants</a></p>",
            esc(&grants::grantee_text(&g.grantee)),
            esc(&g.scopes.join(" ")),
            esc(&crate::rfc3339(g.expires_at)),
            esc(&g.id)
        ),
    )
}

async fn list(
    AxState(state): AxState<Arc<State>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let query = pairs(q.unwrap_or_default().as_bytes());
    let Some((_, b)) = signed_in(&state, &headers) else {
        return sign_in(&state, &query, "/grants").await;
    };
    let grants = match state
        .store
        .list_grants(Some(&b.user), false, crate::now_unix(), 1000)
        .await
    {
        Ok(g) => g,
        Err(e) => return store_failed(&e),
    };
    let mut body = format!(
        "<p>Signed in as <code id=\"user\">{}</code>.</p>",
        esc(&b.user)
    );
    if grants.is_empty() {
        body.push_str("<p id=\"none\">You have given no agent access.</p>");
    } else {
        body.push_str(
            "<table id=\"grants\"><tr><th>Who</th><th>Scopes</th><th>Until</th><th></th></tr>",
        );
        for g in &grants {
            body.push_str(&format!(
                "<tr id=\"{id}\"><td>{}</td><td><code>{}</code></td><td>{}</td><td>\
                 <form method=\"post\" action=\"/grants/revoke\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <input type=\"hidden\" name=\"grant\" value=\"{id}\">\
                 <button type=\"submit\" class=\"revoke\">Revoke</button></form></td></tr>",
                esc(&grants::grantee_text(&g.grantee)),
                esc(&g.scopes.join(" ")),
                esc(&crate::rfc3339(g.expires_at)),
                esc(&b.csrf),
                id = esc(&g.id),
            ));
        }
        body.push_str("</table>");
    }
    body.push_str(&format!(
        "<form method=\"post\" action=\"/signout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <button type=\"submit\" id=\"signout\">Sign out</button></form>",
        esc(&b.csrf)
    ));
    page(StatusCode::OK, "Your grants", &body)
}

async fn revoke(AxState(state): AxState<Arc<State>>, headers: HeaderMap, body: Bytes) -> Response {
    let (form, b) = match posted(&state, &headers, &body, "open your grants again") {
        Ok(p) => p,
        Err(r) => return r,
    };
    let id = one(&form, "grant").unwrap_or_default();
    if id.is_empty() || id.len() > 64 {
        return problem(StatusCode::BAD_REQUEST, "No grant named.");
    }
    match grants::revoke(&state, id, By::User(&b.user), "").await {
        Ok(Some((g, sessions))) => page(
            StatusCode::OK,
            "Grant revoked",
            &format!(
                "<p id=\"revoked\">{} can no longer act for you; {} live session(s) ended.</p><p><a href=\"/grants\">Your grants</a></p>",
                esc(&grants::grantee_text(&g.grantee)),
                sessions.len()
            ),
        ),
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            "You have no live grant with that id.",
        ),
        Err(e) => store_failed(&e),
    }
}

async fn sign_out(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = pairs(&body[..body.len().min(MAX_FORM)]);
    if let Some((c, b)) = signed_in(&state, &headers)
        && csrf_ok(&form, &b)
    {
        state.delegation.browsers.sign_out(&c);
    }
    let mut r = page(
        StatusCode::OK,
        "Signed out",
        "<p id=\"signedout\">You are signed out.</p>",
    );
    r.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&state, "", 0));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            esc(r#"<a href="x" onclick='y'>&</a>"#),
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; warden_consent=abc; b=2"),
        );
        assert_eq!(cookie(&h).as_deref(), Some("abc"));
    }
}
