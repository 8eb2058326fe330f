package msgsig

import (
	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// requestSigned are the calls that release key material or change state.
var requestSigned = map[string]bool{
	// Releases.
	cofferv1.KeyService_GetKey_FullMethodName:                  true,
	cofferv1.CryptoService_GenerateDataKey_FullMethodName:      true,
	cofferv1.CryptoService_GenerateDataKeyBatch_FullMethodName: true,
	cofferv1.CryptoService_Decrypt_FullMethodName:              true,
	cofferv1.CryptoService_DecryptBatch_FullMethodName:         true,
	// Changes.
	cofferv1.KeyService_GenerateKey_FullMethodName:            true,
	cofferv1.KeyService_PutKey_FullMethodName:                 true,
	cofferv1.KeyService_SetKeyState_FullMethodName:            true,
	cofferv1.KeyService_RotateKey_FullMethodName:              true,
	cofferv1.KeyService_RetireKeyVersion_FullMethodName:       true,
	cofferv1.KeyService_AmendKeyUsePolicy_FullMethodName:      true,
	cofferv1.CryptoService_EncryptNew_FullMethodName:          true,
	cofferv1.PolicyService_CreatePolicy_FullMethodName:        true,
	cofferv1.PolicyService_UpdatePolicy_FullMethodName:        true,
	cofferv1.AccessService_RegisterClient_FullMethodName:      true,
	cofferv1.AccessService_SetClientActive_FullMethodName:     true,
	cofferv1.AccessService_RevokeCertificate_FullMethodName:   true,
	cofferv1.AccessService_Grant_FullMethodName:               true,
	cofferv1.AccessService_RevokeGrant_FullMethodName:         true,
	cofferv1.AuditService_Prune_FullMethodName:                true,
	cofferv1.ClusterService_PinNode_FullMethodName:            true,
	cofferv1.ClusterService_RemoveNode_FullMethodName:         true,
	cofferv1.ClusterService_TransferLeadership_FullMethodName: true,
	cofferv1.ClusterService_DrainNode_FullMethodName:          true,
	cofferv1.CacheService_SetCachePolicy_FullMethodName:       true,
	cofferv1.CacheService_FlushCaches_FullMethodName:          true,
}

// decisions are calls whose response is a decision without releasing or
// changing anything.
var decisions = map[string]bool{
	cofferv1.AccessService_Check_FullMethodName:         true,
	cofferv1.CacheService_GetCachePolicy_FullMethodName: true,
}

// RequestSigned reports whether a client signs requests of the unary gRPC
// method (its full name, "/coffer.v1.KeyService/GetKey"): the calls that
// release key material or change state. Streams (snapshot, restore, audit
// export and follow, cache watch) are not signed.
func RequestSigned(fullMethod string) bool { return requestSigned[fullMethod] }

// ResponseSigned reports whether a node signs the responses of the method:
// every signed request's, and those of the decisions (Check,
// GetCachePolicy).
func ResponseSigned(fullMethod string) bool {
	return requestSigned[fullMethod] || decisions[fullMethod]
}
