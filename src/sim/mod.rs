//! Provider simulators: sandbox HTTP servers on loopback, faithful to the
//! seed documents, with fault knobs. Tests, the demo and the benchmarks
//! drive them in-process.

pub mod connectfi;
pub mod connpay;
pub mod crm;
pub mod myfatoorah;
pub mod rest_status;
