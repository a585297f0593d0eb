//! The small SQL surface operations are written against, so one body of operations runs on
//! SQLite and MySQL/MariaDB alike: positional `?` parameters, rows of plain values, and a
//! [`Backend`] to branch on where the dialects differ (upserts, DDL).
//!
//! Values are the four SQL storage classes; conversions name the column when a value is not
//! what the operation expects, rather than panicking.

use r2d2_sqlite::rusqlite;

use crate::error::DbError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Mysql,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SqlValue {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

impl From<&str> for SqlValue {
    fn from(v: &str) -> Self {
        SqlValue::Text(v.to_string())
    }
}

impl From<String> for SqlValue {
    fn from(v: String) -> Self {
        SqlValue::Text(v)
    }
}

impl From<&String> for SqlValue {
    fn from(v: &String) -> Self {
        SqlValue::Text(v.clone())
    }
}

impl From<i64> for SqlValue {
    fn from(v: i64) -> Self {
        SqlValue::Int(v)
    }
}

impl From<u32> for SqlValue {
    fn from(v: u32) -> Self {
        SqlValue::Int(i64::from(v))
    }
}

impl From<usize> for SqlValue {
    fn from(v: usize) -> Self {
        SqlValue::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<bool> for SqlValue {
    fn from(v: bool) -> Self {
        SqlValue::Int(i64::from(v))
    }
}

impl From<f64> for SqlValue {
    fn from(v: f64) -> Self {
        SqlValue::Real(v)
    }
}

impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(v: Option<T>) -> Self {
        v.map_or(SqlValue::Null, Into::into)
    }
}

/// `args![a, b, …]`: the parameters of a statement.
#[macro_export]
macro_rules! args {
    ($($v:expr),* $(,)?) => { &[$($crate::sql::SqlValue::from($v)),*][..] };
}

/// One result row.
#[derive(Clone, Debug, PartialEq)]
pub struct Row(pub Vec<SqlValue>);

impl Row {
    fn at(&self, i: usize) -> Result<&SqlValue, DbError> {
        self.0
            .get(i)
            .ok_or_else(|| DbError::Schema(format!("column {i} missing")))
    }

    pub fn text(&self, i: usize) -> Result<String, DbError> {
        match self.at(i)? {
            SqlValue::Text(s) => Ok(s.clone()),
            SqlValue::Int(n) => Ok(n.to_string()),
            SqlValue::Real(x) => Ok(x.to_string()),
            SqlValue::Null => Err(DbError::Schema(format!("column {i} is NULL"))),
        }
    }

    pub fn opt_text(&self, i: usize) -> Result<Option<String>, DbError> {
        match self.at(i)? {
            SqlValue::Null => Ok(None),
            _ => self.text(i).map(Some),
        }
    }

    pub fn int(&self, i: usize) -> Result<i64, DbError> {
        match self.at(i)? {
            SqlValue::Int(n) => Ok(*n),
            SqlValue::Real(x) => Ok(*x as i64),
            SqlValue::Text(s) => s
                .parse()
                .map_err(|_| DbError::Schema(format!("column {i} is not an integer: {s}"))),
            SqlValue::Null => Err(DbError::Schema(format!("column {i} is NULL"))),
        }
    }

    pub fn real(&self, i: usize) -> Result<f64, DbError> {
        match self.at(i)? {
            SqlValue::Real(x) => Ok(*x),
            SqlValue::Int(n) => Ok(*n as f64),
            SqlValue::Text(s) => s
                .parse()
                .map_err(|_| DbError::Schema(format!("column {i} is not a number: {s}"))),
            SqlValue::Null => Err(DbError::Schema(format!("column {i} is NULL"))),
        }
    }

    pub fn bool(&self, i: usize) -> Result<bool, DbError> {
        self.int(i).map(|n| n != 0)
    }
}

/// An open transaction. Operations run inside one and never commit.
pub trait Tx {
    fn backend(&self) -> Backend;
    /// Runs a statement; returns the rows it changed.
    fn exec(&mut self, sql: &str, args: &[SqlValue]) -> Result<u64, DbError>;
    /// Runs a query; returns every row.
    fn query(&mut self, sql: &str, args: &[SqlValue]) -> Result<Vec<Row>, DbError>;

    /// The first row of a query, if any.
    fn query_opt(&mut self, sql: &str, args: &[SqlValue]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, args)?.into_iter().next())
    }
}

/// A SQLite connection inside a transaction its worker opened.
pub struct SqliteTx<'c>(pub &'c rusqlite::Connection);

impl rusqlite::ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            SqlValue::Null => ValueRef::Null,
            SqlValue::Int(n) => ValueRef::Integer(*n),
            SqlValue::Real(x) => ValueRef::Real(*x),
            SqlValue::Text(s) => ValueRef::Text(s.as_bytes()),
        }))
    }
}

impl Tx for SqliteTx<'_> {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn exec(&mut self, sql: &str, args: &[SqlValue]) -> Result<u64, DbError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        Ok(stmt.execute(rusqlite::params_from_iter(args))? as u64)
    }

    fn query(&mut self, sql: &str, args: &[SqlValue]) -> Result<Vec<Row>, DbError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let columns = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                use rusqlite::types::ValueRef;
                values.push(match row.get_ref(i)? {
                    ValueRef::Null => SqlValue::Null,
                    ValueRef::Integer(n) => SqlValue::Int(n),
                    ValueRef::Real(x) => SqlValue::Real(x),
                    ValueRef::Text(t) | ValueRef::Blob(t) => {
                        SqlValue::Text(String::from_utf8_lossy(t).into_owned())
                    }
                });
            }
            out.push(Row(values));
        }
        Ok(out)
    }
}
