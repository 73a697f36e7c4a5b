//! PVC names for `RestoreSession.spec.target.volumeClaimTemplates`: one PVC per
//! ordinal `0..replicas`, the template's `metadata.name` with `${POD_ORDINAL}`
//! replaced (Stash's convention, e.g. `data-web-${POD_ORDINAL}` gives
//! `data-web-0`, `data-web-1`, ..., the names a StatefulSet `web` with claim
//! template `data` uses).

/// The placeholder replaced by the ordinal.
pub const POD_ORDINAL_PLACEHOLDER: &str = "${POD_ORDINAL}";

/// A claim template that cannot produce distinct names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PvcTemplateError {
    #[error(
        "volumeClaimTemplates entry has no metadata.name; set one, e.g. data-web-${{POD_ORDINAL}}"
    )]
    NoName,
    #[error(
        "volumeClaimTemplates name {0:?} has no ${{POD_ORDINAL}} but replicas is {1}: every replica would get the same PVC. Put ${{POD_ORDINAL}} in the name, e.g. {0}-${{POD_ORDINAL}}"
    )]
    NoPlaceholder(String, u32),
}

/// The PVC name of `ordinal` for a template named `template_name`.
pub fn pvc_name_for_ordinal(template_name: &str, ordinal: u32) -> String {
    template_name.replace(POD_ORDINAL_PLACEHOLDER, &ordinal.to_string())
}

/// The PVC names of ordinals `0..replicas` (one name when `replicas` is absent).
pub fn pvc_names(
    template_name: Option<&str>,
    replicas: Option<u32>,
) -> Result<Vec<String>, PvcTemplateError> {
    let name = template_name
        .filter(|n| !n.is_empty())
        .ok_or(PvcTemplateError::NoName)?;
    let n = replicas.unwrap_or(1);
    if n > 1 && !name.contains(POD_ORDINAL_PLACEHOLDER) {
        return Err(PvcTemplateError::NoPlaceholder(name.to_string(), n));
    }
    Ok((0..n).map(|i| pvc_name_for_ordinal(name, i)).collect())
}

/// The PVC a StatefulSet creates for claim template `claim` of pod `<set>-<ordinal>`.
pub fn statefulset_pvc_name(claim: &str, statefulset: &str, ordinal: u32) -> String {
    format!("{claim}-{statefulset}-{ordinal}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_per_ordinal() {
        assert_eq!(
            pvc_name_for_ordinal("data-web-${POD_ORDINAL}", 3),
            "data-web-3"
        );
        assert_eq!(
            pvc_names(Some("restore-data-restore-demo-${POD_ORDINAL}"), Some(3)).unwrap(),
            vec![
                "restore-data-restore-demo-0",
                "restore-data-restore-demo-1",
                "restore-data-restore-demo-2"
            ]
        );
        assert_eq!(pvc_names(Some("single"), None).unwrap(), vec!["single"]);
        assert_eq!(pvc_names(Some("single"), Some(1)).unwrap(), vec!["single"]);
        assert_eq!(
            pvc_names(Some("x-${POD_ORDINAL}"), Some(0)).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(pvc_names(None, Some(2)), Err(PvcTemplateError::NoName));
        let e = pvc_names(Some("data"), Some(2)).unwrap_err();
        assert_eq!(e, PvcTemplateError::NoPlaceholder("data".into(), 2));
        assert!(e.to_string().contains("data-${POD_ORDINAL}"), "{e}");
    }

    #[test]
    fn matches_the_statefulset_controller() {
        assert_eq!(statefulset_pvc_name("data", "web", 1), "data-web-1");
        assert_eq!(
            pvc_name_for_ordinal("data-web-${POD_ORDINAL}", 1),
            statefulset_pvc_name("data", "web", 1)
        );
    }
}
