//! The system explained on itself: the tour (each pattern and its parts,
//! made to happen on the running demo and checked) and one payment's flow
//! (its trace, as a sequence diagram).

pub mod flow;
pub mod tour;
