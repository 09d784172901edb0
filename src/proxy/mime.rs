//! Content types by file extension: the common entries of nginx's `mime.types`.

/// The type for `name`'s extension (ASCII case-insensitive), if the table has it.
pub fn by_name(name: &[u8]) -> Option<&'static str> {
    let dot = name.iter().rposition(|&b| b == b'.')?;
    let ext = &name[dot + 1..];
    if ext.len() > 8 {
        return None;
    }
    let mut buf = [0u8; 8];
    let lower = &mut buf[..ext.len()];
    lower.copy_from_slice(ext);
    lower.make_ascii_lowercase();
    Some(match &*lower {
        b"html" | b"htm" | b"shtml" => "text/html",
        b"css" => "text/css",
        b"xml" => "text/xml",
        b"txt" => "text/plain",
        b"csv" => "text/csv",
        b"md" => "text/markdown",
        b"js" | b"mjs" => "application/javascript",
        b"json" | b"map" => "application/json",
        b"gif" => "image/gif",
        b"jpeg" | b"jpg" => "image/jpeg",
        b"png" => "image/png",
        b"svg" | b"svgz" => "image/svg+xml",
        b"webp" => "image/webp",
        b"avif" => "image/avif",
        b"ico" => "image/x-icon",
        b"bmp" => "image/x-ms-bmp",
        b"tif" | b"tiff" => "image/tiff",
        b"woff" => "font/woff",
        b"woff2" => "font/woff2",
        b"ttf" => "font/ttf",
        b"otf" => "font/otf",
        b"eot" => "application/vnd.ms-fontobject",
        b"pdf" => "application/pdf",
        b"zip" => "application/zip",
        b"gz" | b"tgz" => "application/gzip",
        b"tar" => "application/x-tar",
        b"7z" => "application/x-7z-compressed",
        b"rar" => "application/x-rar-compressed",
        b"wasm" => "application/wasm",
        b"rss" => "application/rss+xml",
        b"atom" => "application/atom+xml",
        b"doc" => "application/msword",
        b"xls" => "application/vnd.ms-excel",
        b"ppt" => "application/vnd.ms-powerpoint",
        b"docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        b"xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        b"pptx" => "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        b"apk" => "application/vnd.android.package-archive",
        b"bin" | b"exe" | b"dll" | b"iso" | b"img" | b"msi" | b"deb" | b"dmg" => {
            "application/octet-stream"
        }
        b"mp3" => "audio/mpeg",
        b"ogg" => "audio/ogg",
        b"m4a" => "audio/x-m4a",
        b"mp4" => "video/mp4",
        b"webm" => "video/webm",
        b"mpeg" | b"mpg" => "video/mpeg",
        b"mov" => "video/quicktime",
        b"flv" => "video/x-flv",
        b"avi" => "video/x-msvideo",
        b"ts" => "video/mp2t",
        b"m3u8" => "application/vnd.apple.mpegurl",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn looks_up_by_extension() {
        assert_eq!(super::by_name(b"a.PNG"), Some("image/png"));
        assert_eq!(super::by_name(b"/x/y.tar.gz"), Some("application/gzip"));
        assert_eq!(super::by_name(b"noext"), None);
        assert_eq!(super::by_name(b"a.verylongextension"), None);
    }
}
