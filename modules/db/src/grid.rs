//! PLACEHOLDER being replaced in this session: the queue module's db operations.

use iceprod_runtime::{DbReply, DbRequest};

use crate::error::DbError;
use crate::ops::OpRules;
use crate::sql::Tx;

pub fn execute(
    _tx: &mut dyn Tx,
    _rules: OpRules,
    _request: &DbRequest,
) -> Result<DbReply, DbError> {
    Err(DbError::Refused("not built yet".into()))
}
