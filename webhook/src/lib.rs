//! webhook

pub mod controllers;
