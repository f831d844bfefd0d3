//! Being written.

use evos_hal::can::CanFrame;

use super::{Command, DecodeError, ModuleProtocol, Reply, Target};

pub struct UuGreen;

impl ModuleProtocol for UuGreen {
    fn name(&self) -> &'static str {
        "uugreen"
    }
    fn bitrate(&self) -> u32 {
        125_000
    }
    fn module_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(10)
    }
    fn encode_command(&self, _target: Target, _command: &Command) -> Vec<CanFrame> {
        Vec::new()
    }
    fn decode_reply(&self, _frame: &CanFrame) -> Option<Result<(u8, Reply), DecodeError>> {
        None
    }
    fn decode_command(&self, _frame: &CanFrame) -> Option<Result<(Target, Command), DecodeError>> {
        None
    }
    fn encode_reply(&self, _address: u8, _reply: &Reply) -> Vec<CanFrame> {
        Vec::new()
    }
}
