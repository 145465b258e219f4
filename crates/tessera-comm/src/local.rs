use crate::{Collective, CommError, Result};

/// The world of one: every collective is the identity (checked for lengths).
#[derive(Debug, Default, Clone, Copy)]
pub struct Local;

impl Collective for Local {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn transport(&self) -> &'static str {
        "local"
    }
    fn all_reduce_sum(&mut self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_gather(&mut self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        if recv.len() != send.len() {
            return Err(CommError::Length {
                op: "all_gather",
                detail: format!("send {} x world 1 != recv {}", send.len(), recv.len()),
            });
        }
        recv.copy_from_slice(send);
        Ok(())
    }
    fn broadcast(&mut self, _buf: &mut [u8], root: usize) -> Result<()> {
        if root != 0 {
            return Err(CommError::Rank {
                rank: root,
                world: 1,
            });
        }
        Ok(())
    }
    fn barrier(&mut self) -> Result<()> {
        Ok(())
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_gather_copies_and_checks_lengths() {
        let mut c = Local;
        let mut out = [0.0; 3];
        c.all_gather(&[1.0, 2.0, 3.0], &mut out).unwrap();
        assert_eq!(out, [1.0, 2.0, 3.0]);
        assert!(c.all_gather(&[1.0], &mut out).is_err());
        assert!(c.broadcast(&mut [1u8], 1).is_err());
    }
}
