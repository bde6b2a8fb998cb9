import Foundation
import LZ4

/// How event data is stored in `eventline.events.data`, marked by the `codec` column.
/// Small payloads stay plain JSON (nothing to decode); above the threshold they are LZ4 block
/// compressed with the uncompressed length in front — unless that would not make them smaller.
enum PayloadCodec: Int16, Sendable {
    case json = 0
    case lz4JSON = 1

    static func encode(_ data: Data, threshold: Int) -> (Data, PayloadCodec) {
        guard data.count > threshold, let compressed = try? LZ4Block.compress(data), compressed.count < data.count else {
            return (data, .json)
        }
        return (compressed, .lz4JSON)
    }

    static func decode(_ stored: Data, codec: Int16) throws(EventStoreError) -> Data {
        switch PayloadCodec(rawValue: codec) {
        case .json:
            return stored
        case .lz4JSON:
            do {
                return try LZ4Block.decompress(stored)
            } catch {
                throw .corruptEvent("cannot decompress the event data: \(error)")
            }
        case nil:
            throw .corruptEvent("unknown payload codec \(codec)")
        }
    }
}
