//! The loading progress bar: one line on stderr, redrawn in place on a
//! terminal, a line per quarter otherwise (logs stay short).

use std::io::{IsTerminal, Write};

pub struct LoadBar {
    done: Vec<u32>,
    total: Vec<u32>,
    tty: bool,
    last_quarter: u32,
}

impl LoadBar {
    pub fn new(world: usize) -> Self {
        LoadBar {
            done: vec![0; world],
            total: vec![0; world],
            tty: std::io::stderr().is_terminal(),
            last_quarter: 0,
        }
    }

    pub fn update(&mut self, rank: usize, done: u32, total: u32) {
        self.done[rank] = done;
        self.total[rank] = total;
        let (d, t): (u32, u32) = (self.done.iter().sum(), self.total.iter().sum());
        if t == 0 {
            return;
        }
        let per_rank: Vec<String> = self
            .done
            .iter()
            .zip(&self.total)
            .map(|(d, t)| format!("{d}/{t}"))
            .collect();
        let width = 30;
        let filled = (d as usize * width) / t as usize;
        let line = format!(
            "loading [{}{}] {:3}%  layers per rank: {}",
            "#".repeat(filled),
            " ".repeat(width - filled),
            d * 100 / t,
            per_rank.join(" ")
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r{line}");
            if d == t {
                let _ = writeln!(err);
            }
        } else {
            let quarter = d * 4 / t;
            if quarter > self.last_quarter {
                self.last_quarter = quarter;
                let _ = writeln!(err, "{line}");
            }
        }
        let _ = err.flush();
    }
}
