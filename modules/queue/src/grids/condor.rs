//! PLACEHOLDER being replaced in this session: the condor plugin.

use iceprod_runtime::config::{GridConfig, GridType};

use super::{BatchPlugin, CommandOutput, CommandSpec, GridStatus, SubmitJob};
use crate::error::QueueError;

pub struct Condor;

impl Condor {
    pub fn new(_grid: &GridConfig) -> Condor {
        Condor
    }
}

impl BatchPlugin for Condor {
    fn kind(&self) -> GridType {
        GridType::Condor
    }
    fn submit_file(&self, _job: &SubmitJob) -> (String, String) {
        unimplemented!()
    }
    fn submit_command(&self, _job: &SubmitJob, _file: &str) -> CommandSpec {
        unimplemented!()
    }
    fn parse_submit(&self, _output: &CommandOutput) -> Result<Vec<String>, QueueError> {
        unimplemented!()
    }
    fn status_step(&self, _ids: &[String], _done: &[CommandOutput]) -> Option<CommandSpec> {
        unimplemented!()
    }
    fn parse_status(
        &self,
        _ids: &[String],
        _outputs: &[CommandOutput],
    ) -> Result<GridStatus, QueueError> {
        unimplemented!()
    }
    fn remove_command(&self, _ids: &[String]) -> Option<CommandSpec> {
        unimplemented!()
    }
}
