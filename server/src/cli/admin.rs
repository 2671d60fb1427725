//! `ferromq admin`: create and list projects, create, list and revoke tokens, on a running
//! server, with the admin token.

use std::time::Duration;

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use super::{AdminClient, ServerArgs, cell, table};

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Projects.
    #[command(subcommand)]
    Projects(ProjectsCommand),
    /// Project tokens.
    #[command(subcommand)]
    Tokens(TokensCommand),
}

#[derive(Subcommand)]
pub enum ProjectsCommand {
    /// Create a project (a new 24-hex id).
    Create {
        /// A name for people (up to 255 bytes).
        #[arg(long)]
        name: Option<String>,
    },
    /// List every project.
    List,
}

#[derive(Subcommand)]
pub enum TokensCommand {
    /// Create a token for a project. The token is shown only this once.
    Create {
        /// Project id.
        #[arg(long)]
        project: String,
        /// A name for people (up to 255 bytes).
        #[arg(long)]
        name: Option<String>,
    },
    /// List tokens (ids and names, never the secrets): of one project, or all of them,
    /// admin tokens included.
    List {
        #[arg(long)]
        project: Option<String>,
    },
    /// Revoke a token by its id: it is refused (401) from then on.
    Revoke {
        /// Token id (from `tokens list`), not the token itself.
        id: String,
    },
}

fn path_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn name_body(name: Option<String>) -> Value {
    match name {
        Some(n) => json!({ "name": n }),
        None => json!({}),
    }
}

fn project_rows(v: &[Value]) -> String {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|p| vec![cell(&p["id"]), cell(&p["name"]), cell(&p["created_at"])])
        .collect();
    table(&["ID", "NAME", "CREATED"], &rows)
}

fn token_rows(v: &[Value]) -> String {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|t| {
            let owner = if t["admin"] == json!(true) {
                "(admin)".to_string()
            } else {
                cell(&t["project_id"])
            };
            vec![
                cell(&t["id"]),
                owner,
                cell(&t["name"]),
                cell(&t["created_at"]),
            ]
        })
        .collect();
    table(&["ID", "PROJECT", "NAME", "CREATED"], &rows)
}

fn list_of<'a>(v: &'a Value, key: &str) -> anyhow::Result<&'a Vec<Value>> {
    v[key]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("the server's answer has no `{key}` list"))
}

/// Runs one admin command; prints a table, or the server's JSON with `json`.
pub fn run(server: &ServerArgs, json_out: bool, cmd: AdminCommand) -> anyhow::Result<()> {
    let c = AdminClient::new(server, Some(Duration::from_secs(30)))?;
    let (answer, text) = match cmd {
        AdminCommand::Projects(ProjectsCommand::Create { name }) => {
            let v = c.json(Method::POST, "/3/admin/projects", Some(name_body(name)))?;
            let t = project_rows(std::slice::from_ref(&v["project"]));
            (v, t)
        }
        AdminCommand::Projects(ProjectsCommand::List) => {
            let v = c.json(Method::GET, "/3/admin/projects", None)?;
            let t = project_rows(list_of(&v, "projects")?);
            (v, t)
        }
        AdminCommand::Tokens(TokensCommand::Create { project, name }) => {
            let path = format!("/3/admin/projects/{}/tokens", path_segment(&project));
            let v = c.json(Method::POST, &path, Some(name_body(name)))?;
            let tok = &v["token"];
            let t = format!(
                "{}\ntoken: {}\n(shown only this once: store it now)\n",
                token_rows(std::slice::from_ref(tok)),
                cell(&tok["token"])
            );
            (v, t)
        }
        AdminCommand::Tokens(TokensCommand::List { project }) => {
            let path = match project {
                Some(p) => format!("/3/admin/projects/{}/tokens", path_segment(&p)),
                None => "/3/admin/tokens".to_string(),
            };
            let v = c.json(Method::GET, &path, None)?;
            let t = token_rows(list_of(&v, "tokens")?);
            (v, t)
        }
        AdminCommand::Tokens(TokensCommand::Revoke { id }) => {
            let path = format!("/3/admin/tokens/{}", path_segment(&id));
            let v = c.json(Method::DELETE, &path, None)?;
            let t = format!("revoked token {id}\n");
            (v, t)
        }
    };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print!("{text}");
    }
    Ok(())
}
