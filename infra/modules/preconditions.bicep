// Parameter combinations with which Berth cannot start, refused at deployment time (fail()).
// A module of its own because checkov's Bicep parser predates fail(): tests/infra skips only
// this file, which creates nothing.

@description('The Key Vault holding the token-signing key, or empty.')
param keyVaultName string

@description('Whether that Key Vault authorises with Azure RBAC (the app gets a role on the one secret; an access-policy vault would ignore it).')
param keyVaultUsesRbac bool

var vaultUsesRbac = keyVaultUsesRbac ? true : fail('The Key Vault ${keyVaultName} uses access policies: switch it to the Azure RBAC permission model (az keyvault update --enable-rbac-authorization true), so that the registry\'s identity can be given Key Vault Secrets User on the signing key\'s secret alone.')

@description('The token-signing key, or empty.')
@secure()
param tokenSigningKey string

var signingKeyGiven = (empty(keyVaultName) && empty(tokenSigningKey)) ? fail('Give keyVaultName (a Key Vault holding the token-signing key, recommended) or tokenSigningKey (base64 of at least 32 random bytes): with BERTH_AUTH=token every instance must sign registry tokens with the same key.') : true

@description('Hub-spoke subnets: both or neither.')
param existingIntegrationSubnetId string
param existingPrivateEndpointSubnetId string

var subnetsPaired = (empty(existingIntegrationSubnetId) != empty(existingPrivateEndpointSubnetId)) ? fail('Give existingIntegrationSubnetId and existingPrivateEndpointSubnetId together (an existing VNet), or neither (the template makes its own).') : true

output checked bool = signingKeyGiven && subnetsPaired && vaultUsesRbac
