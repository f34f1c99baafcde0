//! Test support: a fresh database per test on either backend, so a behaviour is
//! written once and run on both (`both_backends!`).

use dialer::store::{self, DynStore};
use std::path::PathBuf;

/// The PostgreSQL server the tests use: `DATABASE_URL` (set by `scripts/test`),
/// else the machine's PostgreSQL on 127.0.0.1:5432.
pub fn pg_admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A fresh, migrated database: a temporary SQLite file, or a new PostgreSQL schema.
pub struct TestDb {
    pub store: DynStore,
    /// A URL other processes (a `dialer` under test) can open.
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    /// The PostgreSQL schema this test made, dropped with it.
    schema: Option<String>,
}

/// Drops the test's PostgreSQL schema, so that test runs leave nothing on the
/// shared server (they left about 20 schemas a run before). Best effort, on a thread
/// of its own: `Drop` cannot await, and the test's runtime may be shutting down. A
/// `dialer` process a test left connected could hold a lock: the drop waits at most
/// 10 s for it, then says so and leaves the schema.
impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(schema) = self.schema.take() else {
            return;
        };
        let admin = pg_admin_url();
        let dropped = std::thread::spawn(move || {
            use sqlx::Connection;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .map_err(|e| e.to_string())?;
                sqlx::query("SET lock_timeout = '10s'")
                    .execute(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .execute(&mut conn)
                    .await
                    .map_err(|e| format!("{schema}: {e}"))?;
                Ok::<(), String>(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("test schema not dropped: {e}"),
            Err(_) => eprintln!("test schema not dropped: the dropping thread panicked"),
        }
    }
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("tempdir");
        let path: PathBuf = dir.path().join("dialer.db");
        let url = format!("sqlite://{}", path.display());
        let store = store::connect(&url, 4).await.expect("open sqlite");
        store.migrate().await.expect("migrate sqlite");
        TestDb {
            store,
            url,
            _dir: Some(dir),
            schema: None,
        }
    }

    /// Runs one statement on the test's database through a pool of its own (test
    /// set-up the store has no method for).
    pub async fn execute(&self, sql: &str) {
        if self.url.starts_with("sqlite:") {
            let pool = sqlx::SqlitePool::connect(&self.url).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
        } else {
            let pool = sqlx::PgPool::connect(&self.url).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
    }

    pub async fn postgres() -> TestDb {
        let admin = pg_admin_url();
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        let pool = sqlx::PgPool::connect(&admin).await.unwrap_or_else(|e| {
            panic!("PostgreSQL is required for the postgres half of the tests ({admin}): {e}. Run ./scripts/test, which starts one.")
        });
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&pool)
            .await
            .expect("create schema");
        pool.close().await;
        let sep = if admin.contains('?') { '&' } else { '?' };
        let url = format!("{admin}{sep}options=-c%20search_path%3D{schema}");
        let store = store::connect(&url, 8).await.expect("open postgres");
        store.migrate().await.expect("migrate postgres");
        TestDb {
            store,
            url,
            _dir: None,
            schema: Some(schema),
        }
    }
}

/// Writes a test file and returns its path (kept alive by the returned dir).
pub fn write_file(name: &str, content: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    std::fs::write(&path, content).expect("write");
    (dir, path)
}

/// Runs one async test body against SQLite and PostgreSQL: `NAME::sqlite` and
/// `NAME::postgres` in the test output.
#[macro_export]
macro_rules! both_backends {
    ($(#[$m:meta])* async fn $name:ident($db:ident) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(#[$m])*
            async fn body($db: $crate::support::TestDb) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                body($crate::support::TestDb::sqlite().await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                body($crate::support::TestDb::postgres().await).await
            }
        }
    };
}
