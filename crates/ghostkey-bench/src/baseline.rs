//! The baseline every figure is compared with: the smallest honest actix-web service that
//! makes one durable SQLite write per request. Same framework, same SQLite build, same
//! durability settings (WAL, `synchronous=FULL`) as Ghostkey, one connection behind a
//! mutex, one commit per request, no batching.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpResponse, HttpServer};
use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct WriteRequest {
    payload: String,
}

#[derive(Serialize)]
struct WriteResponse {
    id: i64,
}

type Db = Arc<Mutex<Connection>>;

/// Opens the baseline database with Ghostkey's durability settings.
fn open(path: &Path) -> Result<Connection, String> {
    let conn = Connection::open(path).map_err(|e| e.to_string())?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("cannot enable WAL mode (got {mode})"));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| e.to_string())?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, at INTEGER NOT NULL, payload TEXT NOT NULL)",
    )
    .map_err(|e| e.to_string())?;
    Ok(conn)
}

async fn write(db: web::Data<Db>, body: web::Json<WriteRequest>) -> HttpResponse {
    let db = Arc::clone(&db);
    let payload = body.into_inner().payload;
    let done = web::block(move || -> Result<i64, String> {
        let conn = db.lock().map_err(|_| "poisoned".to_owned())?;
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        // Autocommit: this statement is one transaction, fsynced before it returns.
        conn.execute(
            "INSERT INTO events (at, payload) VALUES (?1, ?2)",
            params![at, payload],
        )
        .map_err(|e| e.to_string())?;
        Ok(conn.last_insert_rowid())
    })
    .await;
    match done {
        Ok(Ok(id)) => HttpResponse::Created().json(WriteResponse { id }),
        _ => HttpResponse::InternalServerError().finish(),
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Serves `POST /write` and `GET /healthz` on `listen` until killed; prints the bound
/// address on standard output first.
pub fn serve(db_path: &Path, listen: SocketAddr) -> Result<(), String> {
    let db: Db = Arc::new(Mutex::new(open(db_path)?));
    actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(Arc::clone(&db)))
                .route("/write", web::post().to(write))
                .route("/healthz", web::get().to(healthz))
        })
        .bind(listen)
        .map_err(|e| e.to_string())?;
        for addr in server.addrs() {
            println!("listening on {addr}");
        }
        server.run().await.map_err(|e| e.to_string())
    })
}
