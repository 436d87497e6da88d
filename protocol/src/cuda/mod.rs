//! The CUDA constants cuwire needs, generated from cuda.h (see `scripts/gen_cuda_tables.py`),
//! plus lookups over them. Nothing here is written out by hand.

mod generated;
pub use generated::*;

/// A CUresult value as it travels on the wire and crosses the C boundary.
pub type CUresult = u32;

/// The driver's name for an error code (`cuGetErrorName`).
pub fn error_name(code: CUresult) -> Option<&'static str> {
    RESULTS.iter().find(|r| r.0 == code).map(|r| r.1)
}

/// A one-sentence description of an error code (`cuGetErrorString`).
pub fn error_string(code: CUresult) -> Option<&'static str> {
    RESULTS.iter().find(|r| r.0 == code).map(|r| r.2)
}

/// The number of a device attribute named as in cuda.h (`CU_DEVICE_ATTRIBUTE_WARP_SIZE`).
pub fn device_attribute(name: &str) -> Option<i32> {
    DEVICE_ATTRIBUTES.iter().find(|a| a.1 == name).map(|a| a.0)
}

/// The cuda.h name of a device attribute number.
pub fn device_attribute_name(value: i32) -> Option<&'static str> {
    DEVICE_ATTRIBUTES.iter().find(|a| a.0 == value).map(|a| a.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_strings_cover_common_codes() {
        assert_eq!(error_name(CUDA_SUCCESS), Some("CUDA_SUCCESS"));
        assert_eq!(error_name(801), Some("CUDA_ERROR_NOT_SUPPORTED"));
        assert!(error_string(CUDA_ERROR_OUT_OF_MEMORY).unwrap().contains("memory"));
        assert_eq!(error_name(123_456), None);
        assert_eq!(device_attribute("CU_DEVICE_ATTRIBUTE_WARP_SIZE"), Some(10));
    }
}
