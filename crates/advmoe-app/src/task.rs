//! The machinery both workers share: a worker owns all Burn work of its kind, takes commands
//! from the UI through its [`Inbox`] and reports through its [`Outbox`], which wakes the UI;
//! the UI holds a [`Handle`]. Its body is one `async` function, started by
//! [`platform::spawn_worker`] (natively a named thread, on the web a task on the page's event
//! loop that yields at every readback).

use std::future::Future;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};

use crate::platform;

/// The UI's handle on a worker that takes commands `C` and reports events `E`.
pub struct Handle<C, E> {
    commands: Sender<C>,
    events: Receiver<E>,
}

/// A worker's way back to the UI: every event wakes the UI.
pub struct Outbox<E> {
    events: Sender<E>,
    wake: Box<dyn Fn() + Send>,
}

impl<E> Outbox<E> {
    /// Send an event and wake the UI; `false` when the UI is gone.
    pub fn send(&self, event: E) -> bool {
        let delivered = self.events.send(event).is_ok();
        (self.wake)();
        delivered
    }
}

/// A worker's command queue.
pub struct Inbox<C> {
    commands: Receiver<C>,
}

/// The UI dropped its handle: the worker should end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

impl<C> Inbox<C> {
    /// The next command, waiting for one (natively by blocking the worker's own thread, on the
    /// web by sleeping between looks); `None` when the UI is gone.
    pub async fn next(&self) -> Option<C> {
        platform::next_message(&self.commands).await
    }

    /// A command if one is queued.
    ///
    /// # Errors
    /// [`Gone`] when the UI is gone.
    pub fn try_next(&self) -> Result<Option<C>, Gone> {
        match self.commands.try_recv() {
            Ok(command) => Ok(Some(command)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(Gone),
        }
    }

    /// Every command queued now.
    pub fn drain(&self) -> Vec<C> {
        self.commands.try_iter().collect()
    }
}

impl<C: Send + 'static, E: Send + 'static> Handle<C, E> {
    /// Start `body` as a worker called `name`: natively on a new thread of that name, on the
    /// web as a task on the page's event loop. `wake` is called after every event (the app
    /// passes `egui::Context::request_repaint`).
    ///
    /// # Errors
    /// If the thread cannot be spawned.
    pub fn spawn<F>(
        name: &str,
        wake: impl Fn() + Send + 'static,
        body: impl FnOnce(Inbox<C>, Outbox<E>) -> F + Send + 'static,
    ) -> std::io::Result<Self>
    where
        F: Future<Output = ()> + 'static,
    {
        let (commands, command_rx) = channel();
        let (event_tx, events) = channel();
        let outbox = Outbox {
            events: event_tx,
            wake: Box::new(wake),
        };
        let inbox = Inbox {
            commands: command_rx,
        };
        platform::spawn_worker(name, move || body(inbox, outbox))?;
        Ok(Self { commands, events })
    }

    /// Send a command; `false` when the worker is gone.
    pub fn send(&self, command: C) -> bool {
        self.commands.send(command).is_ok()
    }

    /// Every event that arrived since the last call.
    pub fn drain(&self) -> Vec<E> {
        self.events.try_iter().collect()
    }
}
